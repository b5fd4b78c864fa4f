using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using DistributedBackprop.Actors;
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
        var replicas = OptionParsing.IntInRange("--replicas", "Local steps: model replicas R (with --local-steps H > 1; 1: synchronous steps).", 1, 1, helpName: "R");
        var localSteps = OptionParsing.IntInRange("--local-steps", "Local steps: inner steps H per round (with --replicas R > 1).", 1, 1, helpName: "H");
        var outerOverlap = new Option<bool>("--outer-overlap") { Description = "Local steps: deal each round ahead, stale by one round (as train's --outer-overlap)." };
        var optimizer = OptionParsing.OptimizerOption(OptimizerKind.Sgd);
        var lr = OptionParsing.PositiveFloat("--lr", "Learning rate.", 0.01f);
        var seconds = OptionParsing.PositiveFloat("--seconds", "Length of one timed window, in seconds.", 1.0f);
        var windows = OptionParsing.PositiveInt("--windows", "Timed windows (the median is reported).", 5);
        var warmup = OptionParsing.PositiveFloat("--warmup", "Warm-up time before timing, in seconds.", 2.0f);
        var noGemm = new Option<bool>("--no-gemm") { Description = "Skip the per-product GEMM measurements." };
        var json = new Option<bool>("--json") { Description = "Print one JSON object." };
        var workers = OptionParsing.WorkersOption("Measure the actor path with this many worker actors (local mode); 0 (default): the plain trainer with --threads.");
        var data = new Option<string?>("--data") { Description = "Use this data set's training rows (and its feature/class counts) instead of synthetic data.", HelpName = "PATH" };
        var gemmShapes = new Option<string?>("--gemm-shapes")
        {
            Description = "Also time plain row-major products (m×k)·(k×n), e.g. 128x784x256,128x256x128 (the shapes numpy peers use).",
            HelpName = "MxKxN,…",
            CustomParser = r =>
            {
                string text = r.Tokens.Count > 0 ? r.Tokens[0].Value : "";
                if (ParseShapes(text) is not { } parsed)
                {
                    r.AddError($"--gemm-shapes: '{text}' is not a list like 128x784x256,128x256x128");
                }
                else if (ShapeProblem(parsed) is string problem)
                {
                    r.AddError($"--gemm-shapes: {problem}");
                }
                return text;
            },
        };
        var command = new Command("bench", "Measure training-step throughput on synthetic data (warm-up, then timed windows).")
        {
            inputs, layers, outputs, activation, outputActivation, loss, batch, chunks, threads, replicas, localSteps, outerOverlap, optimizer, lr, seconds, windows, warmup, noGemm, gemmShapes, workers, data, json,
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
                LocalSteps = parse.GetValue(replicas) > 1 && parse.GetValue(localSteps) > 1
                    ? new LocalStepsSettings { Replicas = parse.GetValue(replicas), Steps = parse.GetValue(localSteps), OuterOverlap = parse.GetValue(outerOverlap) }
                    : null,
            };
            if (config.Validate() is string problem)
            {
                throw new UsageException(problem);
            }
            if (parse.GetValue(outerOverlap) && config.LocalSteps is null)
            {
                throw new UsageException("--outer-overlap: overlaps rounds of local steps; give --replicas R and --local-steps H, both above 1");
            }
            int batchSize = config.BatchSize;
            string? dataPath = parse.GetValue(data);
            if (dataPath is null)
            {
                CheckSyntheticData(batchSize, parse.GetValue(inputs), GC.GetGCMemoryInfo().TotalAvailableMemoryBytes);
            }
            Dataset rows = dataPath is null
                ? SyntheticData.Create((int)Math.Max(16L * batchSize, 4096), parse.GetValue(inputs), parse.GetValue(outputs), seed: 1)
                : DataSources.Load(dataPath, null).Train;
            TrainingSession session = TrainingSession.Prepare(config, rows, test: null, testFraction: 0);
            session.PrepareLocalGradients();
            int workerCount = parse.GetValue(workers);
            var warm = TimeSpan.FromSeconds(parse.GetValue(warmup));
            var window = TimeSpan.FromSeconds(parse.GetValue(seconds));
            ThroughputResult result;
            ActorThroughput? actors = null;
            int threadCount = 0, lanesUsed = 0;
            bool copiesOfTheta = false;
            if (workerCount == 0)
            {
                using var trainer = new Trainer(session, parse.GetValue(threads), UpdateLayout.FromEnvironment() ?? UpdateLayout.Auto);
                threadCount = trainer.Threads;
                result = Benchmarks.MeasureSteps(() => trainer.Step(out _).Rows, warm, parse.GetValue(windows), window);
                lanesUsed = trainer.LanesInUse;
                copiesOfTheta = trainer.CopiesOfThetaInUse;
            }
            else
            {
                actors = ActorBenchmark.Measure(session, workerCount, warm, parse.GetValue(windows), window);
                result = actors.Throughput;
            }
            List<GemmMeasurement> gemms = parse.GetValue(noGemm) ? [] : Benchmarks.MeasureGemms(session.Architecture, batchSize, config.Chunks, TimeSpan.FromSeconds(0.5));
            if (parse.GetValue(gemmShapes) is string shapes)
            {
                gemms.AddRange(Benchmarks.MeasurePlainGemms(ParseShapes(shapes)!, TimeSpan.FromSeconds(1)));
            }
            // Measured only with GEMMs to compare it with (a quarter of a second).
            double peak = gemms.Count > 0 ? Benchmarks.MeasurePeakGigaflops(TimeSpan.FromSeconds(0.05)) : 0;
            Report(parse.GetValue(json), session, threadCount, lanesUsed, copiesOfTheta, workerCount, dataPath, result, actors, gemms, peak);
            return ExitCodes.Success;
        }));
        return command;
    }

    /// <summary>A --gemm-shapes matrix: at most 2^28 floats (1 GB).</summary>
    private const long MaxGemmFloats = 1L << 28;

    /// <summary>A --gemm-shapes product runs at least 25 times (20 warm-up calls, 5 windows): 10^11 flops is seconds a call on one core.</summary>
    private const double MaxGemmFlops = 1e11;

    /// <summary>Why a shape cannot be timed here (a matrix too large to allocate, a product too long to repeat), or null.</summary>
    private static string? ShapeProblem(List<(int M, int K, int N)> shapes)
    {
        foreach (var (m, k, n) in shapes)
        {
            long largest = Math.Max((long)m * k, Math.Max((long)k * n, (long)m * n));
            if (largest > MaxGemmFloats)
            {
                return string.Create(CultureInfo.InvariantCulture, $"{m}x{k}x{n} has a matrix of {largest:N0} floats; at most {MaxGemmFloats:N0} (1 GB) each");
            }
            double flops = 2.0 * m * k * n;
            if (flops > MaxGemmFlops)
            {
                return string.Create(CultureInfo.InvariantCulture, $"{m}x{k}x{n} is {flops:G3} flops (2·m·k·n); at most {MaxGemmFlops:G1} per product, which is timed at least 25 times (20 warm-up calls, 5 windows)");
            }
        }
        return null;
    }

    /// <summary>
    /// The synthetic data is 16 batches (at least 4,096 rows) of --inputs floats: refused before it is allocated
    /// when one buffer cannot hold it, or it would take more than 40 % of the memory this process may use
    /// (training needs the rest). Blamed on --inputs if even 4,096 rows do not fit, else on --batch-size.
    /// </summary>
    private static void CheckSyntheticData(int batchSize, int inputs, long availableBytes)
    {
        bool Fits(double rows) => rows * inputs <= Array.MaxLength && 4.0 * rows * inputs <= 0.4 * availableBytes;
        double rows = Math.Max(16.0 * batchSize, 4096);
        if (Fits(rows))
        {
            return;
        }
        throw new UsageException(string.Create(CultureInfo.InvariantCulture,
            $"{(Fits(4096) ? "--batch-size" : "--inputs")}: the synthetic data would be {rows:N0} rows (16 batches, at least 4,096) × {inputs:N0} inputs = {rows * inputs:N0} floats; one buffer holds at most {Array.MaxLength:N0} and this process can use {availableBytes / 1e9:F1} GB"));
    }

    private static List<(int M, int K, int N)>? ParseShapes(string text)
    {
        var shapes = new List<(int, int, int)>();
        foreach (string item in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            string[] parts = item.Split('x');
            if (parts.Length != 3 || !parts.All(p => int.TryParse(p, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) && v > 0))
            {
                return null;
            }
            shapes.Add((int.Parse(parts[0], CultureInfo.InvariantCulture), int.Parse(parts[1], CultureInfo.InvariantCulture), int.Parse(parts[2], CultureInfo.InvariantCulture)));
        }
        return shapes.Count > 0 ? shapes : null;
    }

    private static void Report(bool asJson, TrainingSession session, int threads, int lanesUsed, bool copiesOfTheta, int workers, string? dataPath, ThroughputResult result, ActorThroughput? actors, List<GemmMeasurement> gemms, double peakGigaflops)
    {
        TrainingConfig config = session.Config;
        if (!asJson)
        {
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{session.Architecture.Describe()}, batch {config.BatchSize}, {config.Chunks} chunks, {(workers > 0 ? $"{workers} worker actor(s)" : $"{threads} thread(s), {lanesUsed} used (timed){(copiesOfTheta ? ", a copy of θ each" : "")}")}, {OptimizerSettings.Name(config.Optimizer.Kind)}, SIMD {SimdTiers.Best} ({PortableMath.LaneWidth} element-wise lanes, {System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture}), data {dataPath ?? "synthetic"}"));
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"samples/s: median {result.MedianSamplesPerSecond:N0} (min {result.MinSamplesPerSecond:N0}, max {result.MaxSamplesPerSecond:N0}) over {result.Windows.Count} windows, {result.Steps} steps; allocated {result.AllocatedBytesPerStep:N1} bytes/step"));
            if (actors is not null)
            {
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"parameter server: {actors.ServerTimeFraction:P1} of the time (reduce + update + broadcast); a copy of θ per worker in {(double.IsNaN(actors.ThetaCopiesFraction) ? "n/a (no epoch ended while timed)" : actors.ThetaCopiesFraction.ToString("P0", CultureInfo.InvariantCulture))} of the steps; waiting for the slowest worker: {actors.WaitForSlowestFraction:P1}; per worker: {string.Join(", ", actors.WorkerStepsPerSecond.OrderBy(k => k.Key).Select(k => $"{k.Key} {k.Value:F1} steps/s, busy {actors.WorkerBusyFraction.GetValueOrDefault(k.Key):P0}"))}"));
            }
            if (gemms.Count > 0)
            {
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"one core's peak (FMA loop, {SimdTiers.Best}): {peakGigaflops:F1} GFLOP/s"));
            }
            foreach (GemmMeasurement g in gemms)
            {
                string where = g.Layer >= 0 ? $"layer {g.Layer}" : "shape  ";
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {where} {g.Product,-34} ({g.M}×{g.K})·({g.K}×{g.N}): {g.GigaflopsPerSecond:F1} GFLOP/s ({g.GigaflopsPerSecond / peakGigaflops:P0} of peak)"));
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
            json.WriteNumber("replicas", config.LocalSteps?.Replicas ?? 1);
            json.WriteNumber("local_steps", config.LocalSteps?.Steps ?? 1);
            json.WriteNumber("threads", threads);
            json.WriteNumber("lanes_used", lanesUsed);
            json.WriteBoolean("theta_copies", copiesOfTheta);
            json.WriteNumber("workers", workers);
            json.WriteString("data", dataPath ?? "synthetic");
            json.WriteString("optimizer", OptimizerSettings.Name(config.Optimizer.Kind));
            json.WriteString("simd", SimdTiers.Best.ToString());
            json.WriteNumber("element_wise_lanes", PortableMath.LaneWidth);
            json.WriteString("architecture", System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture.ToString());
            json.WriteString("numeric_fingerprint", NumericFingerprint.Value);
            json.WriteNumber("processors", Environment.ProcessorCount);
            json.WriteEndObject();
            if (actors is not null)
            {
                json.WriteNumber("server_time_fraction", Math.Round(actors.ServerTimeFraction, 4));
                json.WriteNumber("wait_for_slowest_fraction", Math.Round(actors.WaitForSlowestFraction, 4));
                if (double.IsNaN(actors.ThetaCopiesFraction))
                {
                    json.WriteNull("theta_copies_fraction");
                }
                else
                {
                    json.WriteNumber("theta_copies_fraction", Math.Round(actors.ThetaCopiesFraction, 4));
                }
                json.WriteStartObject("worker_busy_fraction");
                foreach (var (name, fraction) in actors.WorkerBusyFraction.OrderBy(k => k.Key, StringComparer.Ordinal))
                {
                    json.WriteNumber(name, Math.Round(fraction, 4));
                }
                json.WriteEndObject();
                json.WriteStartObject("worker_steps_per_second");
                foreach (var (name, rate) in actors.WorkerStepsPerSecond.OrderBy(k => k.Key, StringComparer.Ordinal))
                {
                    json.WriteNumber(name, Math.Round(rate, 2));
                }
                json.WriteEndObject();
            }
            if (gemms.Count > 0)
            {
                json.WriteNumber("peak_gflops", Math.Round(peakGigaflops, 2));
            }
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
                json.WriteNumber("fraction_of_peak", Math.Round(g.GigaflopsPerSecond / peakGigaflops, 3));
                json.WriteEndObject();
            }
            json.WriteEndArray();
            json.WriteEndObject();
        }
        Console.WriteLine(Encoding.UTF8.GetString(buffer.ToArray()));
    }
}
