using BenchmarkDotNet.Attributes;
using DistributedBackprop.Data;
using DistributedBackprop.Engine;
using DistributedBackprop.Optimizers;

namespace DistributedBackprop.Benchmarks;

/// <summary>
/// One training step of the 784-256-128-10 ReLU/softmax network (forward, backward, chunk-tree reduce,
/// SGD update). MemoryDiagnoser checks the steady state allocates nothing per step.
/// </summary>
[MemoryDiagnoser]
public class TrainingStepBenchmarks
{
    private Trainer _trainer = null!;

    [Params(32, 128, 512)]
    public int BatchSize { get; set; }

    [Params(1, 2)]
    public int Threads { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        var config = new TrainingConfig
        {
            HiddenLayers = [256, 128],
            BatchSize = BatchSize,
            Epochs = 1_000_000,
            Optimizer = new OptimizerSettings { Kind = OptimizerKind.Sgd, LearningRate = 0.01f },
        };
        // 64 batches per epoch: the per-epoch shuffle is amortised like in real training.
        Dataset data = SyntheticData.Create(BatchSize * 64, 784, 10, seed: 1);
        _trainer = new Trainer(TrainingSession.Prepare(config, data, null, 0), Threads);
    }

    [GlobalCleanup]
    public void Cleanup() => _trainer.Dispose();

    [Benchmark]
    public float Step()
    {
        _trainer.Step(out float learningRate);
        return learningRate;
    }
}
