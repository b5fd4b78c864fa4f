using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using DistributedBackprop.Data;
using DistributedBackprop.Engine;
using DistributedBackprop.Kernels;
using DistributedBackprop.Network;
using DistributedBackprop.Optimizers;

namespace DistributedBackprop.Cli.Commands;

/// <summary>`dbp bench`: training-step throughput on synthetic data, plus GEMM GFLOP/s of the layer shapes.</summary>
internal static class BenchCommand
{
    public static Command Create()
    {
        var inputs = OptionParsing.PositiveInt("--inputs", "Input features.", 784);
        var layers = OptionParsing.LayersOption("--layers", "Hidden layer widths.", [256, 128]);
        var outputs = OptionParsing.PositiveInt("--outputs", "Output classes.", 10);
        var activation = OptionParsing.ActivationOption("--activation", "Hidden activation.", Activation.Relu, allowSoftmax: false);
        var outputActivation = OptionParsing.ActivationOption("--output-activation", "Output activation.", Activation.Softmax, allowSoftmax: true);
        var loss = OptionParsing.LossOption(Loss.CrossEntropy);
        var batch = OptionParsing.PositiveInt("--batch-size", "Rows per global batch.", 128);
        var chunks = OptionParsing.PositiveInt("--chunks", "Chunks per batch.", 8);
        var threads = OptionParsing.PositiveInt("--threads", "Threads computing each step.", 1);
        var optimizer = OptionParsing.OptimizerOption(OptimizerKind.Sgd);
        var lr = OptionParsing.PositiveFloat("--lr", "Learning rate.", 0.01f);
        var seconds = OptionParsing.PositiveFloat("--seconds", "Length of one timed window, in seconds.", 1.0f);
        var windows = OptionParsing.PositiveInt("--windows", "Timed windows (the median is reported).", 5);
        var warmup = OptionParsing.PositiveFloat("--warmup", "Warm-up time before timing, in seconds.", 2.0f);
        var noGemm = new Option<bool>("--no-gemm") { Description = "Skip the per-product GEMM measurements." };
        var json = new Option<bool>("--json") { Description = "Print one JSON object." };
        var command = new Command("bench", "Measure training-step throughput on synthetic data (warm-up, then timed windows).")
        {
            inputs, layers, outputs, activation, outputActivation, loss, batch, chunks, threads, optimizer, lr, seconds, windows, warmup, noGemm, json,
        };
        command.SetAction(parse => CommandRunner.Run("bench", () =>
        {
            var config = new TrainingConfig
            {
                HiddenLayers = parse.GetValue(layers) ?? [],
                HiddenActivation = parse.GetValue(activation),
                OutputActivation = parse.GetValue(outputActivation),
                Loss = parse.GetValue(loss),
                BatchSize = parse.GetValue(batch),
                Chunks = parse.GetValue(chunks),
                Epochs = 1_000_000,
                Optimizer = new OptimizerSettings { Kind = parse.GetValue(optimizer), LearningRate = parse.GetValue(lr) },
            };
            if (config.Validate() is string problem)
            {
                throw new UsageException(problem);
            }
            int batchSize = config.BatchSize;
            Dataset data = SyntheticData.Create(Math.Max(batchSize * 16, 4096), parse.GetValue(inputs), parse.GetValue(outputs), seed: 1);
            TrainingSession session = TrainingSession.Prepare(config, data, test: null, testFraction: 0);
            using var trainer = new Trainer(session, parse.GetValue(threads));
            ThroughputResult result = Benchmarks.MeasureSteps(() => trainer.Step(out _), batchSize,
                TimeSpan.FromSeconds(parse.GetValue(warmup)), parse.GetValue(windows), TimeSpan.FromSeconds(parse.GetValue(seconds)));
            List<GemmMeasurement> gemms = parse.GetValue(noGemm) ? [] : Benchmarks.MeasureGemms(session.Architecture, batchSize, config.Chunks, TimeSpan.FromSeconds(0.5));
            Report(parse.GetValue(json), session, trainer.Threads, result, gemms);
            return ExitCodes.Success;
        }));
        return command;
    }

    private static void Report(bool asJson, TrainingSession session, int threads, ThroughputResult result, List<GemmMeasurement> gemms)
    {
        TrainingConfig config = session.Config;
        if (!asJson)
        {
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{session.Architecture.Describe()}, batch {config.BatchSize}, {config.Chunks} chunks, {threads} thread(s), {OptimizerSettings.Name(config.Optimizer.Kind)}, SIMD {SimdTiers.Best}"));
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"samples/s: median {result.MedianSamplesPerSecond:N0} (min {result.MinSamplesPerSecond:N0}, max {result.MaxSamplesPerSecond:N0}) over {result.Windows.Count} windows, {result.Steps} steps; allocated {result.AllocatedBytesPerStep:N1} bytes/step"));
            foreach (GemmMeasurement g in gemms)
            {
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  layer {g.Layer} {g.Product,-34} ({g.M}×{g.K})·({g.K}×{g.N}): {g.GigaflopsPerSecond:F1} GFLOP/s"));
            }
            return;
        }
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            json.WriteNumber("samples_per_second", Math.Round(result.MedianSamplesPerSecond, 1));
            json.WriteNumber("samples_per_second_min", Math.Round(result.MinSamplesPerSecond, 1));
            json.WriteNumber("samples_per_second_max", Math.Round(result.MaxSamplesPerSecond, 1));
            json.WriteStartArray("windows");
            foreach (double w in result.Windows) json.WriteNumberValue(Math.Round(w, 1));
            json.WriteEndArray();
            json.WriteNumber("steps", result.Steps);
            json.WriteNumber("allocated_bytes_per_step", Math.Round(result.AllocatedBytesPerStep, 1));
            json.WriteStartObject("config");
            json.WriteNumber("inputs", session.Architecture.Inputs);
            json.WriteStartArray("layers");
            foreach (int width in config.HiddenLayers) json.WriteNumberValue(width);
            json.WriteEndArray();
            json.WriteNumber("outputs", session.Architecture.Outputs);
            json.WriteString("activation", config.HiddenActivation.Name());
            json.WriteString("output_activation", config.OutputActivation.Name());
            json.WriteString("loss", config.Loss.Name());
            json.WriteNumber("batch_size", config.BatchSize);
            json.WriteNumber("chunks", config.Chunks);
            json.WriteNumber("threads", threads);
            json.WriteNumber("workers", 0);
            json.WriteString("optimizer", OptimizerSettings.Name(config.Optimizer.Kind));
            json.WriteString("simd", SimdTiers.Best.ToString());
            json.WriteNumber("processors", Environment.ProcessorCount);
            json.WriteEndObject();
            json.WriteStartArray("gemm");
            foreach (GemmMeasurement g in gemms)
            {
                json.WriteStartObject();
                json.WriteNumber("layer", g.Layer);
                json.WriteString("product", g.Product);
                json.WriteNumber("m", g.M);
                json.WriteNumber("n", g.N);
                json.WriteNumber("k", g.K);
                json.WriteNumber("gflops", Math.Round(g.GigaflopsPerSecond, 2));
                json.WriteEndObject();
            }
            json.WriteEndArray();
            json.WriteEndObject();
        }
        Console.WriteLine(Encoding.UTF8.GetString(buffer.ToArray()));
    }
}
