using System.CommandLine;
using System.Globalization;
using DistributedBackprop.Actors;
using DistributedBackprop.Actors.Cluster;
using DistributedBackprop.Actors.Transport;
using DistributedBackprop.Cli.Live;
using DistributedBackprop.Cli.Output;
using DistributedBackprop.Engine;

namespace DistributedBackprop.Cli.Commands;

/// <summary>`dbp serve`: the cluster's seed node, with the parameter server and the training coordinator.</summary>
internal static class ServeCommand
{
    public static Command Create()
    {
        var training = new TrainingOptionSet();
        var node = new NodeOptionSet();
        var port = OptionParsing.PortOption("--port", "Akka port of this node, the seed workers join (0 = any free port). Env: DBP_PORT.", 4053, 0);
        var serverShards = TrainCommand.ServerShardsOption("");
        var minWorkers = OptionParsing.PositiveInt("--min-workers", "Training starts once this many workers have registered; later ones join from the next step.", 1);
        var output = new Option<string?>("--out") { Description = "Write the trained model here (safetensors).", HelpName = "FILE" };
        var metrics = new Option<string?>("--metrics") { Description = "Write per-epoch metrics here (JSON lines).", HelpName = "FILE" };
        var plot = TrainCommand.PlotOption();
        var run = RunFiles.RunOption();
        var printRun = RunFiles.PrintRunOption();
        var http = new Option<string?>("--http") { Description = "Serve a live page of the run at [HOST:]PORT (127.0.0.1 unless a host is given): members, workers, curves, counters; /api/status (JSON), /metrics (Prometheus).", HelpName = "[HOST:]PORT" };
        var httpAllowRemote = new Option<bool>("--http-allow-remote") { Description = "Allow --http on a non-loopback address (the page has no authentication)." };
        var checkpoint = new Option<string?>("--checkpoint") { Description = "Write a resumable checkpoint here after every epoch. If FILE exists when serve starts and belongs to this run, training resumes from it (a restart with the same command line continues the run).", HelpName = "FILE" };
        var checkpointEvery = OptionParsing.IntInRange("--checkpoint-every", "Also checkpoint every N steps (0 = only at epoch ends).", 0, 0);
        var resume = new Option<string?>("--resume") { Description = "Continue from a checkpoint (the parameter server restarts from it; same bits as an uninterrupted run).", HelpName = "FILE" };
        var progress = OptionParsing.ProgressOption("Progress display: auto, bar, plain or none.");
        var stateDir = new Option<string?>("--state-dir") { Description = "Where the cluster CA and join token are kept between runs (created if missing). Env: DBP_STATE_DIR. Default ~/.dbp/cluster.", HelpName = "DIR" };
        var tokenFile = new Option<string?>("--token-file") { Description = "Write the join token to FILE (mode 0600; a valid token already there is reused), for `dbp worker --token-file FILE`. Env: DBP_TOKEN_FILE.", HelpName = "FILE" };
        var newToken = new Option<bool>("--new-token") { Description = "Rotate the join token: workers need the new one to join (certificates already issued stay valid until they expire)." };

        var command = new Command("serve", "Run the parameter server and training coordinator as the seed of a cluster; workers join with `dbp worker --join HOST:PORT`.");
        training.AddTo(command);
        node.AddTo(command);
        foreach (Option option in new Option[] { port, minWorkers, serverShards, output, metrics, plot, http, httpAllowRemote, run, printRun, checkpoint, checkpointEvery, resume, progress, stateDir, tokenFile, newToken })
        {
            command.Options.Add(option);
        }
        command.SetAction(parse => CommandRunner.Run("serve", () =>
        {
            int? givenPort = parse.GetResult(port) is { Implicit: false } ? parse.GetValue(port) : null;
            NodeSettings settings = node.Settings(parse, givenPort, null) with { NewToken = parse.GetValue(newToken) };
            settings = settings with
            {
                Port = settings.Port ?? 4053,
                StateDirectory = parse.GetValue(stateDir) ?? settings.StateDirectory,
                TokenFile = parse.GetValue(tokenFile) ?? settings.TokenFile,
            };
            // The join handshake happens at the bulk port; by default it is the next port, where workers look for it.
            settings = settings with { BulkPort = settings.BulkPort ?? (settings.Port == 0 ? 0 : settings.Port + 1) };
            if (settings.BulkPort > 65535)
            {
                throw new UsageException($"--port {settings.Port}: the bulk channel's default port is the next one, {settings.BulkPort}, beyond 65535; give --bulk-port");
            }
            if (parse.GetValue(tokenFile) is string tokenPath)
            {
                TrainCommand.CheckWritable(tokenPath, "--token-file");
            }
            if (parse.GetValue(printRun))
            {
                Console.WriteLine(RunFiles.Describe(parse, parse.CommandResult.Command));
                return ExitCodes.Success;
            }
            if (parse.GetValue(node.ShowConfig))
            {
                return NodeOptionSet.Show(settings, ClusterNaming.ServerRole);
            }
            TrainingConfig config = training.Config(parse);
            KeptModel keep = training.KeptModel(parse, config);
            TrainingOptionSet.Warn("serve", training.Ignored(parse));
            var (session, split) = training.PrepareSessionWithSplit(parse, config);
            int shardCount = TrainCommand.CheckServerShards(parse.GetValue(serverShards), session);
            string? modelPath = parse.GetValue(output), metricsPath = parse.GetValue(metrics), checkpointPath = parse.GetValue(checkpoint);
            if (TrainCommand.CheckpointEveryIgnored(parse.GetValue(checkpointEvery), checkpointPath is not null, config) is string ignored)
            {
                TrainingOptionSet.Warn("serve", [ignored]);
            }
            if (parse.GetValue(resume) is string resumeFrom)
            {
                session.RestoreCheckpoint(resumeFrom);
            }
            else if (checkpointPath is not null && File.Exists(checkpointPath))
            {
                // What a supervisor's restart does: the same command line again. The checkpoint it left is
                // this run's only if configuration and data match (RestoreCheckpoint checks both).
                try
                {
                    session.RestoreCheckpoint(checkpointPath);
                }
                catch (Models.ModelFileException e)
                {
                    throw new UsageException($"--checkpoint: {checkpointPath} exists but is not this run's checkpoint ({e.Message}); move it away, or pass it to --resume deliberately");
                }
                OneLine.ToStandardError($"dbp serve: resuming from {checkpointPath} at step {session.GlobalStep} of {session.TotalSteps}");
            }
            TrainCommand.CheckDistinct([("--out", modelPath), ("--metrics", metricsPath), ("--plot", parse.GetValue(plot)), ("--checkpoint", checkpointPath)],
                [("--data", parse.GetValue(training.Data)), ("--test-data", parse.GetValue(training.TestData)), ("--resume", parse.GetValue(resume))],
                ("--checkpoint", "--resume"));
            TrainCommand.CheckWritable(modelPath, "--out", TrainCommand.ModelBytes(session));
            TrainCommand.CheckWritable(metricsPath, "--metrics");
            TrainCommand.CheckWritable(parse.GetValue(plot), "--plot");
            TrainCommand.CheckWritable(checkpointPath, "--checkpoint", TrainCommand.CheckpointBytes(session));
            string? dataPath = parse.GetValue(training.Data) is string d ? Path.GetFullPath(d) : null;
            System.Net.IPEndPoint? httpEndpoint = parse.GetValue(http) is string h ? ClusterLook.ParseEndpoint(h, parse.GetValue(httpAllowRemote)) : null;

            using var display = new TrainingDisplay(parse.GetValue(progress), metricsPath is null ? null : new MetricsWriter(metricsPath, session.GlobalStep / session.StepsPerEpoch));
            int wanted = parse.GetValue(minWorkers);
            string title = $"training {session.Architecture.Describe()} on {session.Train.Source}: {session.Train.Rows} training rows, {(session.Validation is { } validation ? $"{validation.Rows} validation rows, " : "")}{config.Epochs} epochs of {session.StepsPerEpoch} steps (batch {config.BatchSize}{TrainCommand.LocalStepsNote(config)}), cluster mode";
            // The live page's state (and its Prometheus registry) exists only when the page is served.
            LiveStatus? live = httpEndpoint is null ? null : new LiveStatus(title, session.TotalSteps, config.Epochs);
            ITrainingObserver[] observers = live is null ? [display, new MembershipLog(wanted)] : [display, live, new MembershipLog(wanted)];
            var bulkBytes = new BulkBytesObserver(new ObserverTee(observers));
            ClusterServer server = ClusterServer.Start(session, settings, wanted, bulkBytes, checkpointPath is null ? null : new CheckpointPolicy(checkpointPath, parse.GetValue(checkpointEvery)), new ServerData(dataPath, parse.GetValue(training.Label), split, parse.GetValue(training.Header)), shardCount);
            bulkBytes.Count = () => server.Channel.BytesSent + server.Channel.BytesReceived;
            AnnounceJoin(server, settings, wanted);
            LiveServer? page = null;
            if (httpEndpoint is not null && live is not null)
            {
                var look = new ClusterLook(server.System, checkpointPath);
                page = LiveServer.StartAsync(httpEndpoint, live, look.LookAsync).GetAwaiter().GetResult();
                Console.Error.WriteLine($"dbp serve: live page at {page.Url} (/api/status, /metrics)");
            }
            bool succeeded = false, restartable = false;
            string message = "";
            try
            {
                var rates = new WorkerRates();
                display.Detail = rates.Describe;
                TrainCommand.RunActors(display, title, session, async () =>
                {
                    await using (display.ShowsBar ? WorkerRates.Poll(server.System, rates, TimeSpan.FromSeconds(1)) : null)
                    {
                        await server.Completion.ConfigureAwait(false);
                    }
                });
                TrainCommand.Finish(session, display, modelPath, parse.GetValue(plot), keep);
                succeeded = true;
                message = session.StoppedEarly ? $"training stopped early after {session.GlobalStep} steps" : $"training finished after {session.GlobalStep} steps";
                long steps = Math.Max(1, session.GlobalStep);
                double modelBytes = session.Parameters.Length * 4.0;
                double perStep = (server.Channel.BytesSent + server.Channel.BytesReceived) / (double)steps;
                int workers = display.Epochs.Count > 0 ? display.Epochs[^1].Workers : wanted;
                // With local steps, also per round: the exchange itself, θ down and the replicas' changes up.
                string perRound = config.LocalSteps is null ? "" : string.Create(CultureInfo.InvariantCulture,
                    $", {(server.Channel.BytesSent + server.Channel.BytesReceived) / (double)Math.Max(1, session.UpdatesDone) / 1e6:F3} MB/round of {config.LocalSteps.Steps} steps");
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"cluster: first step {server.Formation.FirstStepAt?.TotalSeconds:F2} s after start; bulk channel {server.Channel.BytesSent / 1e6:F1} MB sent, {server.Channel.BytesReceived / 1e6:F1} MB received = {perStep / 1e6:F3} MB/step{perRound} for {workers} worker(s) ({perStep / (2 * modelBytes * workers):F3} × the {modelBytes / 1e6:F3} MB model each way per worker per step)"));
            }
            catch (TrainingStoppedException e)
            {
                message = e.Message;
                restartable = e.Restartable;
                throw new TrainingStoppedException(TrainCommand.NamingLastCheckpoint(e.Message, checkpointPath));
            }
            finally
            {
                live?.Finished(succeeded, message);
                // A restartable stop ends this process as a crash would: the workers are not told to exit, so they
                // wait for the server and rejoin its restart (a supervisor's, or the same command line by hand).
                if (!restartable)
                {
                    server.AnnounceFinishAsync(new TrainingFinished(session.GlobalStep, succeeded, message)).GetAwaiter().GetResult();
                }
                page?.DisposeAsync().AsTask().GetAwaiter().GetResult();
                server.DisposeAsync().AsTask().GetAwaiter().GetResult();
            }
            return ExitCodes.Success;
        }));
        return command;
    }

    /// <summary>Where the server listens, and the exact command line a worker joins with (the token itself only when no token file holds it).</summary>
    private static void AnnounceJoin(ClusterServer server, NodeSettings settings, int wanted)
    {
        int bulkPort = BulkChannel.ParseEndpoint(server.Channel.Endpoint).Port;
        string join = $"dbp worker --join {server.Address.Host}:{server.Address.Port}" + (bulkPort == server.Address.Port + 1 ? "" : $" --server-bulk-port {bulkPort}");
        if (server.Authority is { } authority)
        {
            OneLine.ToStandardError($"dbp serve: cluster CA and join token in {authority.StateDirectory}" + (settings.TokenFile is { } file ? $"; token written to {file} (mode 0600)" : ""));
            join += settings.TokenFile is { } tokenFile ? $" --token-file {tokenFile}" : $" --token {authority.Token}";
        }
        else
        {
            Console.Error.WriteLine("dbp serve: WARNING --insecure: no TLS, no join token; anyone who can reach ports " +
                $"{server.Address.Port} and {bulkPort} can join, read the data and model, and poison or stop this run");
            join += " --insecure";
        }
        Console.Error.WriteLine($"dbp serve: listening at {server.Address} (bulk channel {server.Channel.Endpoint}); waiting for {wanted} worker(s)");
        OneLine.ToStandardError($"dbp serve: workers join with: {join}");
    }
}

/// <summary>`dbp worker`: a worker node that joins a `dbp serve` cluster and computes gradients until training is over.</summary>
internal static class WorkerCommand
{
    public static Command Create()
    {
        var node = new NodeOptionSet();
        var join = new Option<string?>("--join") { Description = "The server's HOST:PORT (comma-separated for several seeds). Env: DBP_SEED_NODES.", HelpName = "HOST:PORT" };
        var port = OptionParsing.PortOption("--port", "Akka port of this node (0 = any free port). Env: DBP_PORT.", 0, 0);
        var data = new Option<string?>("--data") { Description = "Where this node finds the training data (default: the path the server loaded). Its content must equal the server's.", HelpName = "PATH" };
        var stream = new Option<bool>("--stream-data") { Description = "Receive the training rows from the server instead of reading files." };
        var name = new Option<string?>("--name") { Description = "This worker's name (default: worker-HOST-XXXXXX, a random suffix: containers share PID 1, and may share a host name).", HelpName = "NAME" };
        var token = new Option<string?>("--token") { Description = "The join token `dbp serve` printed. Env: DBP_JOIN_TOKEN. (Visible in the process list: prefer --token-file.)", HelpName = "TOKEN" };
        var tokenFile = new Option<string?>("--token-file") { Description = "Read the join token from FILE (as written by `dbp serve --token-file`). Env: DBP_TOKEN_FILE.", HelpName = "FILE" };
        var serverBulkPort = OptionParsing.PortOption("--server-bulk-port", "The server's bulk channel port, where the join handshake happens (default: the --join port + 1). Env: DBP_SERVER_BULK_PORT.", 0, 1);
        var joinTimeout = OptionParsing.IntInRange("--join-timeout", "Keep knocking for this many seconds while the server does not answer at the start (it may still be starting); then exit 1. Env: DBP_JOIN_TIMEOUT. Default 300.", 300, 1);
        var rejoinTimeout = OptionParsing.IntInRange("--rejoin-timeout", "When the server is lost (killed, restarting, unreachable), keep trying to rejoin it for this many seconds (0: exit at once). Env: DBP_REJOIN_TIMEOUT. Default 300.", 300, 0);
        var linkRate = new Option<string?>("--link-rate") { Description = "This node's network link (e.g. 100mbit, 1gbit, 2.5gbit): the bulk channel paces each connection at the link's share of each peer it sends tensors to, so a step's all-to-all does not overflow a switch's queues. auto: the speed the Ethernet interface reports, if 100 Mbit/s or more (else unpaced); off: no pacing. Env: DBP_LINK_RATE. Default auto.", HelpName = "RATE" };
        var command = new Command("worker", "Join a cluster started with `dbp serve` and compute gradients until training is over (exit code 0).") { join, port, data, stream, name, token, tokenFile, serverBulkPort, joinTimeout, rejoinTimeout, linkRate };
        node.AddTo(command);
        command.SetAction(parse => CommandRunner.Run("worker", () =>
        {
            IReadOnlyList<string>? seeds = parse.GetValue(join)?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            int? givenPort = parse.GetResult(port) is { Implicit: false } ? parse.GetValue(port) : null;
            NodeSettings settings = node.Settings(parse, givenPort, seeds);
            settings = settings with
            {
                Port = settings.Port ?? 0,
                Token = parse.GetValue(token) ?? (parse.GetValue(tokenFile) is null ? settings.Token : null),
                TokenFile = parse.GetValue(tokenFile) ?? settings.TokenFile,
                ServerBulkPort = parse.GetResult(serverBulkPort) is { Implicit: false } ? parse.GetValue(serverBulkPort) : settings.ServerBulkPort,
                RejoinTimeout = parse.GetResult(rejoinTimeout) is { Implicit: false } ? TimeSpan.FromSeconds(parse.GetValue(rejoinTimeout)) : settings.RejoinTimeout,
                JoinTimeout = parse.GetResult(joinTimeout) is { Implicit: false } ? TimeSpan.FromSeconds(parse.GetValue(joinTimeout)) : settings.JoinTimeout,
                LinkRate = LinkPacing.Checked(parse.GetValue(linkRate), "--link-rate") ?? settings.LinkRate,
            };
            if (parse.GetValue(node.ShowConfig))
            {
                return NodeOptionSet.Show(settings, ClusterNaming.WorkerRole);
            }
            if (settings.SeedNodes is not { Count: > 0 })
            {
                throw new UsageException("--join: the server's HOST:PORT is required (or set DBP_SEED_NODES)");
            }
            // The node's configuration is built only once the server has enrolled it: a bad --cluster-config (or a bad
            // value in it) is reported now, not after minutes of knocking.
            settings.BuildConfig(ClusterNaming.WorkerRole);
            foreach (string seed in settings.SeedNodes)
            {
                settings.SeedAddress(seed); // validates HOST:PORT before anything starts
            }
            if (!settings.Tls)
            {
                Console.Error.WriteLine("dbp worker: WARNING --insecure: no TLS, no join token; whoever can reach this node or the server can read and alter what it computes");
            }
            string workerName = parse.GetValue(name) ?? DefaultName();
            using var cancel = new CancellationTokenSource();
            // Ctrl-C and SIGTERM (docker stop, systemd, Kubernetes) stop the worker gracefully: it leaves the cluster.
            Console.CancelKeyPress += (_, e) =>
            {
                e.Cancel = true;
                cancel.Cancel();
            };
            using var terminate = System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGTERM, signal =>
            {
                signal.Cancel = true;
                cancel.Cancel();
            });
            WorkerExit exit = ClusterWorker.RunAsync(settings, new WorkerNodeOptions(workerName, parse.GetValue(data), parse.GetValue(stream), line => OneLine.ToStandardError(string.Create(CultureInfo.InvariantCulture, $"dbp worker {DateTime.Now:HH:mm:ss.fff}: {line}"))), cancel.Token).GetAwaiter().GetResult();
            (exit.ExitCode == 0 ? Console.Out : Console.Error).WriteLine($"dbp worker: {exit.Message}");
            return exit.ExitCode;
        }, handlesInterrupt: true));
        return command;
    }

    /// <summary>worker-HOST-XXXXXX: a random suffix, since containers all run as PID 1 and may share a host name.</summary>
    internal static string DefaultName() =>
        $"worker-{Sanitize(Environment.MachineName)}-{Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(3))}";

    private static string Sanitize(string text) => new(text.Select(c => char.IsAsciiLetterOrDigit(c) || c == '-' ? c : '-').ToArray());
}
