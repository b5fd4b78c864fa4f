using System.Globalization;
using System.CommandLine;
using DistributedBackprop.Cli.Output;
using DistributedBackprop.Data;
using DistributedBackprop.Actors;
using DistributedBackprop.Engine;
using DistributedBackprop.Models;

namespace DistributedBackprop.Cli.Commands;

/// <summary>`dbp train`: trains a network and prints its test accuracy.</summary>
internal static class TrainCommand
{
    public static Command Create()
    {
        var training = new TrainingOptionSet();
        var output = new Option<string?>("--out") { Description = "Write the trained model here (safetensors).", HelpName = "FILE" };
        var metrics = new Option<string?>("--metrics") { Description = "Write per-epoch metrics here (JSON lines).", HelpName = "FILE" };
        var plot = PlotOption();
        var run = RunFiles.RunOption();
        var printRun = RunFiles.PrintRunOption();
        // The default is the plain trainer on every core: on one machine it is faster than the worker actors
        // today (README, Performance), and the model is the same bits either way.
        var workers = OptionParsing.WorkersOption("Worker actors sharing each step (local mode: one ActorSystem with a parameter server, as a cluster runs). 0: the plain trainer, no actors (faster on one machine). The model is the same for any value.");
        var serverShards = ServerShardsOption("With --workers N: ");
        var threads = OptionParsing.PositiveInt("--threads", "With --workers 0: at most this many threads compute each step's chunks (timed against one thread as training goes, the faster kept; results do not depend on it). Default: the number of cores.", Environment.ProcessorCount);
        var checkpoint = new Option<string?>("--checkpoint") { Description = "Write a resumable checkpoint here after every epoch.", HelpName = "FILE" };
        var checkpointEvery = OptionParsing.IntInRange("--checkpoint-every", "Also checkpoint every N steps (0 = only at epoch ends).", 0, 0);
        var resume = new Option<string?>("--resume") { Description = "Continue from a checkpoint written with the same data and options; the result equals an uninterrupted run.", HelpName = "FILE" };
        var progress = OptionParsing.ProgressOption("Progress display: auto (bar on a terminal, plain lines otherwise), bar, plain or none.");

        var command = new Command("train", "Train a network by backpropagation. With no options: the embedded UCI digits, a 64-128-10 ReLU/softmax network.");
        training.AddTo(command);
        foreach (Option option in new Option[] { output, metrics, plot, workers, serverShards, threads, checkpoint, checkpointEvery, resume, progress, run, printRun })
        {
            command.Options.Add(option);
        }

        command.SetAction(parse => CommandRunner.Run("train", () =>
        {
            if (parse.GetValue(printRun))
            {
                Console.WriteLine(RunFiles.Describe(parse, command));
                return ExitCodes.Success;
            }
            TrainingConfig config = training.Config(parse);
            KeptModel keep = training.KeptModel(parse, config);
            TrainingOptionSet.Warn("train", training.Ignored(parse).Concat(Ignored(parse, config, workers, serverShards, threads, checkpoint, checkpointEvery)));
            TrainingSession session = training.PrepareSession(parse, config);
            session.PrepareLocalGradients();
            int shardCount = CheckServerShards(parse.GetValue(serverShards), session);
            string? resumeFrom = parse.GetValue(resume);
            if (resumeFrom is not null)
            {
                session.RestoreCheckpoint(resumeFrom);
            }
            string? checkpointPath = parse.GetValue(checkpoint);
            string? metricsPath = parse.GetValue(metrics);
            string? modelPath = parse.GetValue(output), plotPath = parse.GetValue(plot);
            CheckDistinct([("--out", modelPath), ("--metrics", metricsPath), ("--plot", plotPath), ("--checkpoint", checkpointPath)],
                [("--data", parse.GetValue(training.Data)), ("--test-data", parse.GetValue(training.TestData)), ("--resume", resumeFrom), ("--run", parse.GetValue(run))],
                ("--checkpoint", "--resume"));
            CheckWritable(modelPath, "--out", ModelBytes(session));
            CheckWritable(metricsPath, "--metrics");
            CheckWritable(plotPath, "--plot");
            CheckWritable(checkpointPath, "--checkpoint", CheckpointBytes(session));

            int workerCount = parse.GetValue(workers);
            // A bad DBP_UPDATE_LAYOUT ends the run before anything is printed.
            string layout = UpdateLayout.FromEnvironment() ?? UpdateLayout.Auto;
            if (workerCount > 0)
            {
                LocalTraining.ResolveConfig();
            }
            using var display = new TrainingDisplay(parse.GetValue(progress), metricsPath is null ? null : new MetricsWriter(metricsPath, session.GlobalStep / session.StepsPerEpoch));
            CheckpointPolicy? checkpoints = checkpointPath is null ? null : new CheckpointPolicy(checkpointPath, parse.GetValue(checkpointEvery));
            string mode = workerCount == 0 ? $"{parse.GetValue(threads)} thread(s), no actors" : $"{workerCount} worker actor(s), local mode";
            string title = $"training {session.Architecture.Describe()} on {session.Train.Source}: {session.Train.Rows} training rows, "
                + (session.Validation is { } validation ? $"{validation.Rows} validation rows, " : "") + $"{session.Test?.Rows ?? 0} test rows, {config.Epochs} epochs of {session.StepsPerEpoch} steps (batch {config.BatchSize}{LocalStepsNote(config)}), {mode}";
            try
            {
                if (workerCount == 0)
                {
                    using var trainer = new Trainer(session, parse.GetValue(threads), layout);
                    display.Run(title, session.TotalSteps, session.GlobalStep, () => trainer.Run(display, checkpoints));
                }
                else
                {
                    // The bar shows each worker's steps/s over the last second, polled from the parameter server.
                    var rates = new WorkerRates();
                    display.Detail = rates.Describe;
                    RunActors(display, title, session, async () =>
                    {
                        await using LocalTraining run = LocalTraining.Start(session, workerCount, display, checkpoints, serverShards: shardCount);
                        await using (display.ShowsBar ? WorkerRates.Poll(run.System, rates, TimeSpan.FromSeconds(1)) : null)
                        {
                            await run.Completion.ConfigureAwait(false);
                        }
                    });
                }
            }
            catch (Exception e) when (e is TrainingDivergedException or TrainingStoppedException)
            {
                throw new TrainingStoppedException(NamingLastCheckpoint(e.Message, checkpointPath));
            }
            Finish(session, display, modelPath, plotPath, keep);
            return ExitCodes.Success;
        }));
        return command;
    }

    /// <summary>--server-shards, for `train` (local mode) and `serve`.</summary>
    internal static Option<int> ServerShardsOption(string when) => OptionParsing.PositiveInt("--server-shards",
        when + "cut θ and the optimizer state into K slices, each summed and updated by its own shard actor placed beside a worker (in a cluster: on the worker nodes, so no node's link carries θ for every worker). The model is the same for any K.", 1);

    /// <summary>The shard count, if the run can be sharded.</summary>
    internal static int CheckServerShards(int shards, TrainingSession session)
    {
        if (shards > session.Parameters.Length)
        {
            throw new UsageException($"--server-shards {shards}: the network has only {session.Parameters.Length} parameters to cut");
        }
        if (shards > 1 && session.Config.LocalSteps is not null)
        {
            throw new UsageException($"--server-shards {shards} with --replicas/--local-steps: parameter shards and local steps do not go together yet (local steps already send θ once per round); drop one of them");
        }
        return shards;
    }

    /// <summary>--checkpoint-every N given with checkpoints on, for a run that is checkpointed at epoch ends only: the warning, or null.</summary>
    internal static string? CheckpointEveryIgnored(int every, bool checkpointing, TrainingConfig config) =>
        every > 0 && checkpointing && !config.CheckpointsInsideEpochs()
            ? $"--checkpoint-every {every} has no effect with --outer-overlap: a round in flight starts from θ one outer step old and the replicas' own values, which a checkpoint does not hold; checkpoints are written at each epoch's end"
            : null;

    /// <summary>For a run's title: ", 2 replicas × 32 local steps" with local steps, else nothing.</summary>
    internal static string LocalStepsNote(TrainingConfig config) =>
        config.LocalSteps is { } local ? $", {local.Replicas} replicas × {local.Steps} local steps" : "";

    /// <summary>Options of `train` itself that the rest of its command line makes pointless.</summary>
    private static IEnumerable<string> Ignored(ParseResult parse, TrainingConfig config, Option<int> workers, Option<int> serverShards, Option<int> threads, Option<string?> checkpoint, Option<int> checkpointEvery)
    {
        int workerCount = parse.GetValue(workers);
        if (workerCount == 0 && TrainingOptionSet.Given(parse, serverShards))
        {
            yield return "--server-shards has no effect with --workers 0: the plain trainer updates θ itself (the model is the same)";
        }
        if (workerCount > 0 && TrainingOptionSet.Given(parse, threads))
        {
            yield return $"--threads has no effect with worker actors (--workers {workerCount}): each worker computes on one thread; --workers 0 --threads {parse.GetValue(threads)} runs the plain trainer";
        }
        if (workerCount > config.UpdateParts() && TrainingOptionSet.Given(parse, workers))
        {
            yield return config.LocalSteps is { } local
                ? $"--workers {workerCount} with --replicas {local.Replicas}: at most {local.Replicas} workers compute in a round, {workerCount - local.Replicas} will idle (--replicas is part of the model's definition: more replicas, another model)"
                : $"--workers {workerCount} with --chunks {config.Chunks}: at most {config.Chunks} workers compute in a step, {workerCount - config.Chunks} will idle (--chunks is part of the model's definition: more chunks, another model)";
        }
        if (TrainingOptionSet.Given(parse, checkpointEvery) && parse.GetValue(checkpoint) is null)
        {
            yield return "--checkpoint-every has no effect without --checkpoint FILE";
        }
        if (CheckpointEveryIgnored(parse.GetValue(checkpointEvery), parse.GetValue(checkpoint) is not null, config) is string overlapped)
        {
            yield return overlapped;
        }
    }

    /// <summary>Shows progress while an actor run completes; a run the server stopped becomes a one-line error.</summary>
    internal static void RunActors(TrainingDisplay display, string title, TrainingSession session, Func<Task> run) =>
        display.Run(title, session.TotalSteps, session.GlobalStep, () =>
        {
            try
            {
                run().GetAwaiter().GetResult();
            }
            catch (TrainingFailedException e)
            {
                throw new TrainingStoppedException(e.Message, e.Restartable);
            }
        });

    /// <summary>
    /// A stopped run's line, naming the checkpoint it leaves (checkpoints are written only after good steps,
    /// so the file on disk is the last good state) and how to go on from it.
    /// </summary>
    internal static string NamingLastCheckpoint(string message, string? checkpointPath)
    {
        if (checkpointPath is null || !File.Exists(checkpointPath))
        {
            return message;
        }
        try
        {
            string step = SafeTensors.ReadMetadata(checkpointPath).GetValueOrDefault("global_step", "?");
            return $"{message}; the last good checkpoint is {checkpointPath} (after step {step})";
        }
        catch (Exception e) when (e is ModelFileException or IOException)
        {
            return $"{message}; the checkpoint {checkpointPath} cannot be read ({e.Message})";
        }
    }

    /// <summary>--plot FILE of train and serve.</summary>
    internal static Option<string?> PlotOption() => new("--plot")
    {
        Description = "Write this run's learning curves here (PNG: loss and accuracy per epoch, train and test, and per-worker steps/s with actors). `dbp plot` draws metrics files.",
        HelpName = "FILE",
    };

    /// <summary>
    /// After training: the kept model (last or best epoch), its test accuracy, the model file, the learning
    /// curves, the summary table with the validation record's line.
    /// </summary>
    internal static void Finish(TrainingSession session, TrainingDisplay display, string? modelPath, string? plotPath, KeptModel keep)
    {
        display.Persist();
        ModelFile model = session.ToModel(keep);
        EvaluationResult? test = session.Test is null ? null : new Evaluator(session.Architecture).Evaluate(model.Parameters, session.Test);
        if (modelPath is not null)
        {
            model.Save(modelPath);
        }
        PlotCommand.WriteRunPlot(plotPath, display.History, modelPath is null ? "run" : Path.GetFileNameWithoutExtension(modelPath));
        string? validation = session.Tracker is { } tracker
            ? $"{tracker.Describe()}; the model holds " + (model.ExtraMetadata["kept"] == "best" ? $"epoch {tracker.BestEpoch} (--keep best)"
                : keep == KeptModel.Best ? $"the last epoch, {session.Epoch} (no best epoch to keep)" : $"the last epoch, {session.Epoch} (--keep last)")
            : null;
        display.PrintSummary(modelPath, test, validation);
    }

    /// <summary>
    /// Fails before training, not after an hour of it, when an output cannot be written: its directory must
    /// exist, a file must be creatable there (a read-only file system or a directory without write permission
    /// is found now), and the file system must have room for <paramref name="expectedBytes"/>.
    /// </summary>
    internal static void CheckWritable(string? path, string option, long expectedBytes = 0)
    {
        if (path is null)
        {
            return;
        }
        if (string.IsNullOrWhiteSpace(path))
        {
            throw new UsageException($"{option}: a file name is required, got '{path}'");
        }
        string full = Path.GetFullPath(path);
        if (DataFiles.KindOf(full) == DataFiles.PathKind.Special)
        {
            return; // a device or a pipe: written to directly (DataFiles.WriteAtomically), its own errors name it
        }
        string directory = Path.GetDirectoryName(full) ?? "/";
        if (!Directory.Exists(directory))
        {
            throw new UsageException($"{option}: directory {directory} does not exist");
        }
        if (Directory.Exists(path))
        {
            throw new UsageException($"{option}: {path} is a directory");
        }
        string probe = Path.Combine(directory, $".{Path.GetFileName(full)}.{Environment.ProcessId}.probe.tmp");
        try
        {
            using (new FileStream(probe, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1, FileOptions.DeleteOnClose))
            {
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new UsageException($"{option}: cannot write in {directory} ({DataFiles.WithoutTemporaryName(e.Message, probe)})");
        }
        long free = new DriveInfo(directory).AvailableFreeSpace;
        if (free < expectedBytes)
        {
            throw new UsageException(string.Create(CultureInfo.InvariantCulture,
                $"{option}: {directory} has {free / 1e6:F2} MB free; {Path.GetFileName(full)} needs about {expectedBytes / 1e6:F2} MB"));
        }
    }

    /// <summary>
    /// Refuses a command line that names one file for two purposes where one write would destroy the other:
    /// an output that is also an input (`--out` over the `--data` being read) or another output (`--out` and
    /// `--metrics`). Paths are compared after resolving symbolic links; devices and pipes may be shared
    /// (`--out /dev/null --metrics /dev/null`). <paramref name="mayShare"/> lists pairs that may name one file
    /// (`--checkpoint` and `--resume`: a run that resumes from its checkpoint keeps writing it).
    /// </summary>
    internal static void CheckDistinct((string Option, string? Path)[] outputs, (string Option, string? Path)[] inputs, params (string, string)[] mayShare)
    {
        var seen = new List<(string Option, string Path, string Canonical, bool IsOutput)>();
        foreach (var (option, path, isOutput) in inputs.Select(i => (i.Option, i.Path, false)).Concat(outputs.Select(o => (o.Option, o.Path, true))))
        {
            if (string.IsNullOrEmpty(path))
            {
                continue;
            }
            string full = Path.GetFullPath(path);
            if (DataFiles.KindOf(full) == DataFiles.PathKind.Special)
            {
                continue;
            }
            string canonical = File.Exists(full) ? File.ResolveLinkTarget(full, returnFinalTarget: true)?.FullName ?? full : full;
            foreach (var (otherOption, otherPath, otherCanonical, otherIsOutput) in seen)
            {
                bool clash = (isOutput || otherIsOutput) && otherCanonical == canonical
                    && !mayShare.Contains((option, otherOption)) && !mayShare.Contains((otherOption, option));
                if (clash)
                {
                    throw new UsageException(path == otherPath
                        ? $"{option} {path}: the same file as {otherOption}; writing it would destroy the other"
                        : $"{option} {path}: the same file as {otherOption} {otherPath}; writing it would destroy the other");
                }
            }
            seen.Add((option, path, canonical, isOutput));
        }
    }

    /// <summary>About what a model file of this session takes on disk (parameters, plus room for the metadata).</summary>
    internal static long ModelBytes(TrainingSession session) => session.Parameters.Length * 4L + MetadataAllowance;

    /// <summary>About what a checkpoint takes: the model plus every optimizer state tensor.</summary>
    internal static long CheckpointBytes(TrainingSession session) =>
        session.Parameters.Length * 4L * (1 + session.Optimizer.StateTensors().Count()) + MetadataAllowance;

    private const long MetadataAllowance = 64 * 1024;
}
