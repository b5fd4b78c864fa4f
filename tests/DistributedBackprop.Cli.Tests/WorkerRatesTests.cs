using DistributedBackprop.Actors;
using DistributedBackprop.Cli.Output;
using DistributedBackprop.Data;
using DistributedBackprop.Engine;
using DistributedBackprop.Optimizers;

namespace DistributedBackprop.Cli.Tests;

/// <summary>The live per-worker rates of the progress bar: differences of the server's step counts, current to the second.</summary>
public sealed class WorkerRatesTests
{
    [Fact]
    public void Rates_are_the_last_intervals_differences_and_only_for_workers_in_both_samples()
    {
        var rates = new WorkerRates();
        rates.Sample(TimeSpan.FromSeconds(1), new Dictionary<string, long> { ["w1"] = 100, ["w2"] = 40 });
        Assert.Equal("", rates.Describe()); // one sample: no interval yet
        rates.Sample(TimeSpan.FromSeconds(3), new Dictionary<string, long> { ["w1"] = 110, ["w2"] = 44, ["w3"] = 7 });
        Assert.Equal("w1:5/s w2:2/s", rates.Describe()); // w3 just joined: no rate until its next sample
        rates.Sample(TimeSpan.FromSeconds(4), new Dictionary<string, long> { ["w1"] = 120, ["w3"] = 9 });
        Assert.Equal("w1:10/s w3:2/s", rates.Describe()); // w2 left
    }

    [Fact]
    public async Task Polling_a_running_parameter_server_gives_each_workers_current_rate()
    {
        var random = new Random(5);
        int rows = 2000, features = 16;
        float[] values = Enumerable.Range(0, rows * features).Select(_ => (float)random.NextDouble()).ToArray();
        int[] labels = Enumerable.Range(0, rows).Select(i => i % 3).ToArray();
        var config = new TrainingConfig { HiddenLayers = [32], Epochs = 1000, BatchSize = 16, Optimizer = new OptimizerSettings { Kind = OptimizerKind.Sgd, LearningRate = 0.01f } };
        TrainingSession session = TrainingSession.Prepare(config, new Dataset("noise", features, values, labels, ["a", "b", "c"], DataKind.Table), null, 0);
        await using LocalTraining run = LocalTraining.Start(session, 2, NullObserver.Instance);
        var rates = new WorkerRates();
        await using (WorkerRates.Poll(run.System, rates, TimeSpan.FromMilliseconds(200)))
        {
            // Waits for a condition that must come true (both workers measured as stepping), not for time.
            using var deadline = new CancellationTokenSource(TimeSpan.FromMinutes(1));
            while (!(rates.Current.GetValueOrDefault("worker-1") > 0 && rates.Current.GetValueOrDefault("worker-2") > 0))
            {
                await Task.Delay(50, deadline.Token);
            }
        }
        Assert.Matches(@"^worker-1:\d+/s worker-2:\d+/s$", rates.Describe());
        Assert.False(run.Completion.IsCompleted);
    }
}
