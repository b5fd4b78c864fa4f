using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using Xunit.Abstractions;

namespace DistributedBackprop.Cli.Tests;

/// <summary>
/// Cluster mode with real processes on 127.0.0.1: `dbp serve` and `dbp worker` talking Akka.Remote over TCP
/// and the bulk channel. Opt-in suite "multiprocess".
/// </summary>
[Trait("Category", "Integration")]
public sealed class ClusterProcessTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("dbp-mp-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static readonly string[] Run = ["--epochs", "120", "--layers", "64", "--batch-size", "64", "--optimizer", "adam", "--lr", "0.002"];

    private string TokenFile => Path.Combine(_dir, "join-token");

    /// <summary>`dbp serve` with the run's options, its cluster state in this test's directory, the token written to <see cref="TokenFile"/>.</summary>
    private string[] Serve(params string[] args) => ServeOn(0, args);

    private string[] ServeOn(int port, params string[] args) =>
        ["serve", .. args, "--port", port.ToString(CultureInfo.InvariantCulture), "--state-dir", Path.Combine(_dir, "state"), "--token-file", TokenFile];

    /// <summary>A port free on 127.0.0.1 now, for a server that must come back at the same address after a restart.</summary>
    private static int FreeLoopbackPort()
    {
        var probe = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        probe.Start();
        int port = ((System.Net.IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop();
        return port;
    }

    /// <summary>The worker command line the server prints (join address, bulk port, token file).</summary>
    private static string[] JoinCommand(RunningDbp server) =>
        server.WaitFor(@"workers join with: dbp (worker .*)$", TimeSpan.FromSeconds(60)).Groups[1].Value.Split(' ');

    [IntegrationFact("multiprocess")]
    public void ServerAndThreeWorkerProcesses_WorkerKilledAndRestarted_GiveTheLocalModesBytes()
    {
        string local = Path.Combine(_dir, "local.safetensors"), clustered = Path.Combine(_dir, "cluster.safetensors");
        // Long enough that the restarted worker (several seconds from process start to its first work) joins
        // well before the end: 120 epochs could end first.
        string[] run = ["--epochs", "1500", .. Run[2..]];
        DbpResult reference = DbpProcess.Run(_dir, ["train", .. run, "--workers", "3", "--out", local, "--progress", "none"]);
        Assert.True(reference.ExitCode == 0, reference.Stderr);

        string metrics = Path.Combine(_dir, "metrics.jsonl");
        using var server = new RunningDbp(_dir, Serve([.. run, "--min-workers", "3", "--out", clustered, "--metrics", metrics, "--progress", "plain"]));
        string[] join = JoinCommand(server);
        using var w1 = new RunningDbp(_dir, [.. join, "--name", "w1"]);
        using var w2 = new RunningDbp(_dir, [.. join, "--name", "w2"]);
        using var w3 = new RunningDbp(_dir, [.. join, "--name", "w3"]);

        server.WaitFor(@"^epoch\s+10\b", TimeSpan.FromMinutes(2));
        var clock = Stopwatch.StartNew();
        w2.KillHard();
        server.WaitFor(@"worker w2 died", TimeSpan.FromSeconds(30));
        output.WriteLine($"SIGKILL of w2 noticed after {clock.Elapsed.TotalSeconds:F2} s");
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(15), $"the dead worker was noticed only after {clock.Elapsed}");

        using var restarted = new RunningDbp(_dir, [.. join, "--name", "w2-restarted"]);
        server.WaitFor(@"worker w2-restarted joined", TimeSpan.FromMinutes(1));
        server.WaitFor(@"^epoch\s+1500\b", TimeSpan.FromMinutes(5));
        Assert.Equal(0, server.WaitForExit(TimeSpan.FromMinutes(1)));
        foreach (RunningDbp worker in new[] { w1, w3, restarted })
        {
            Assert.True(worker.WaitForExit(TimeSpan.FromSeconds(30)) == 0, worker.Output);
            Assert.Contains("training finished after", worker.Output);
        }
        Assert.Equal(File.ReadAllBytes(local), File.ReadAllBytes(clustered));
        // The restarted worker got work: it has a step rate in the last epochs' metrics, the killed one has not.
        using var last = System.Text.Json.JsonDocument.Parse(File.ReadAllLines(metrics)[^1]);
        var rates = last.RootElement.GetProperty("worker_steps_per_second");
        Assert.True(rates.TryGetProperty("w2-restarted", out var rate) && rate.GetDouble() > 0, rates.ToString());
        Assert.False(rates.TryGetProperty("w2", out _), rates.ToString());
        output.WriteLine(string.Join('\n', server.Lines.Where(l => l.StartsWith("cluster:", StringComparison.Ordinal))));
    }

    /// <summary>`dbp launch`: a server and N worker processes in one command, every line prefixed, the server's exit code, local mode's bits.</summary>
    [IntegrationFact("multiprocess")]
    public void Launch_StartsAServerAndWorkers_AndTrainsTheLocalModesBytes()
    {
        string local = Path.Combine(_dir, "local.safetensors"), launched = Path.Combine(_dir, "launched.safetensors");
        Assert.Equal(0, DbpProcess.Run(_dir, ["train", .. Run, "--workers", "3", "--out", local, "--progress", "none"]).ExitCode);
        DbpResult launch = DbpProcess.Run(_dir, ["launch", "--workers", "3", .. Run, "--out", launched]);
        Assert.True(launch.ExitCode == 0, launch.Stderr + launch.Stdout);
        Assert.Equal(File.ReadAllBytes(local), File.ReadAllBytes(launched));
        string all = launch.Stdout + launch.Stderr;
        foreach (string prefix in new[] { "[server] epoch 120", "[server] dbp serve", "[w1] dbp worker: training finished", "[w2] dbp worker: training finished", "[w3] dbp worker: training finished" })
        {
            Assert.Contains(prefix, all.Replace("epoch  120", "epoch 120", StringComparison.Ordinal));
        }
        // An option the server refuses: its one line, prefixed, and its exit code.
        DbpResult bad = DbpProcess.Run(_dir, "launch", "--workers", "2", "--epochs", "0");
        Assert.Equal(2, bad.ExitCode);
        Assert.Contains("[server] dbp serve: --epochs", bad.Stderr);
    }

    /// <summary>
    /// Early stopping in cluster mode: worker processes rebuild the training rows (test and validation splits)
    /// from their own copy of the data, the server stops every worker at the plain trainer's epoch, and the
    /// kept best model has its bytes.
    /// </summary>
    [IntegrationFact("multiprocess")]
    public void EarlyStoppingInAClusterOfProcesses_StopsAtThePlainTrainersEpoch_WithItsBytes()
    {
        string[] stopping = ["--validation-fraction", "0.2", "--early-stopping", "2", "--epochs", "60"];
        string plain = Path.Combine(_dir, "plain.safetensors"), launched = Path.Combine(_dir, "launched.safetensors");
        DbpResult reference = DbpProcess.Run(_dir, ["train", .. stopping, "--workers", "0", "--out", plain, "--progress", "plain"]);
        Assert.True(reference.ExitCode == 0, reference.Stderr);
        string stopLine = reference.Stdout.Split('\n').First(l => l.StartsWith("early stopping after epoch", StringComparison.Ordinal)).TrimEnd();
        DbpResult launch = DbpProcess.Run(_dir, ["launch", "--workers", "2", .. stopping, "--out", launched, "--progress", "plain"]);
        Assert.True(launch.ExitCode == 0, launch.Stderr + launch.Stdout);
        Assert.Contains($"[server] {stopLine}", launch.Stdout);
        Assert.Contains("[w1] dbp worker: training stopped early after", launch.Stdout + launch.Stderr);
        Assert.Equal(File.ReadAllBytes(plain), File.ReadAllBytes(launched));
    }

    /// <summary>
    /// Local steps across processes: a server and three worker processes over real TCP, 3 replicas taking rounds
    /// of 7 steps, one worker SIGKILLed mid-run (its replicas' rounds restart from the round's θ on the others):
    /// the model is the plain trainer's, byte for byte, as is `dbp launch` with one and with two workers.
    /// </summary>
    [IntegrationFact("multiprocess")]
    public void LocalStepsInAClusterOfProcesses_GiveThePlainTrainersBytes_ThroughAWorkersDeath() => LocalStepsInAClusterOfProcesses([]);

    /// <summary>The same with --outer-overlap: rounds dealt ahead, the dead worker's replicas dealt again with their starts.</summary>
    [IntegrationFact("multiprocess")]
    public void OverlappedLocalStepsInAClusterOfProcesses_GiveThePlainTrainersBytes_ThroughAWorkersDeath() => LocalStepsInAClusterOfProcesses(["--outer-overlap"]);

    private void LocalStepsInAClusterOfProcesses(string[] extra)
    {
        string[] local = ["--epochs", "1500", "--replicas", "3", "--local-steps", "7", "--optimizer", "adam", "--lr", "0.002", .. extra];
        string plain = Path.Combine(_dir, "plain.safetensors"), clustered = Path.Combine(_dir, "cluster.safetensors"), launched = Path.Combine(_dir, "launched.safetensors");
        DbpResult reference = DbpProcess.Run(_dir, ["train", .. local, "--workers", "0", "--out", plain, "--progress", "none"]);
        Assert.True(reference.ExitCode == 0, reference.Stderr);
        using (var server = new RunningDbp(_dir, Serve([.. local, "--min-workers", "3", "--out", clustered, "--progress", "plain"])))
        {
            string[] join = JoinCommand(server);
            using var w1 = new RunningDbp(_dir, [.. join, "--name", "w1"]);
            using var w2 = new RunningDbp(_dir, [.. join, "--name", "w2"]);
            using var w3 = new RunningDbp(_dir, [.. join, "--name", "w3"]);
            server.WaitFor(@"^epoch\s+5\b", TimeSpan.FromMinutes(2));
            w2.KillHard();
            server.WaitFor("worker w2 died", TimeSpan.FromSeconds(60));
            Assert.True(server.WaitForExit(TimeSpan.FromMinutes(3)) == 0, server.Output);
            Assert.Equal(0, w1.WaitForExit(TimeSpan.FromSeconds(30)));
        }
        Assert.Equal(File.ReadAllBytes(plain), File.ReadAllBytes(clustered));
        foreach (string workers in new[] { "1", "2" })
        {
            DbpResult launch = DbpProcess.Run(_dir, ["launch", "--workers", workers, .. local, "--out", launched, "--progress", "none"]);
            Assert.True(launch.ExitCode == 0, launch.Stderr + launch.Stdout);
            Assert.True(File.ReadAllBytes(plain).AsSpan().SequenceEqual(File.ReadAllBytes(launched)), $"dbp launch --workers {workers}: other bytes");
        }
    }

    /// <summary>
    /// SIGTERM (docker stop, systemd) of a worker is a graceful stop: the worker leaves the cluster and exits 0,
    /// the server logs a leave, not a death (it never logs "died" for it: the run's last line comes after),
    /// the survivor takes its chunks, and the model keeps local mode's bits.
    /// </summary>
    [IntegrationFact("multiprocess")]
    public void SigtermOfAWorker_IsALeave_NotADeath_AndTheModelKeepsItsBits()
    {
        string local = Path.Combine(_dir, "local.safetensors"), clustered = Path.Combine(_dir, "cluster.safetensors");
        Assert.Equal(0, DbpProcess.Run(_dir, ["train", .. Run, "--workers", "2", "--out", local, "--progress", "none"]).ExitCode);
        using var server = new RunningDbp(_dir, Serve([.. Run, "--min-workers", "2", "--out", clustered, "--progress", "plain"]));
        string[] join = JoinCommand(server);
        using var w1 = new RunningDbp(_dir, [.. join, "--name", "w1"]);
        using var w2 = new RunningDbp(_dir, [.. join, "--name", "w2"]);
        server.WaitFor(@"^epoch\s+10\b", TimeSpan.FromMinutes(2));
        w2.Terminate();
        Assert.True(w2.WaitForExit(TimeSpan.FromSeconds(30)) == 0, w2.Output);
        Assert.True(w2.Output.Contains("dbp worker: stopped by a signal; left the cluster", StringComparison.Ordinal), w2.Output);
        server.WaitFor(@"worker w2 left \(a graceful stop", TimeSpan.FromSeconds(30));
        Assert.Equal(0, server.WaitForExit(TimeSpan.FromMinutes(3)));
        Assert.Equal(0, w1.WaitForExit(TimeSpan.FromSeconds(30)));
        Assert.DoesNotContain("worker w2 died", server.Output);
        Assert.Contains("worker w1 joined", server.Output);
        Assert.Equal(File.ReadAllBytes(local), File.ReadAllBytes(clustered));
    }

    /// <summary>
    /// A member's port that accepts and closes: a worker pinned to it joins, is SIGKILLed, and a listener takes
    /// the port. The server, reconnecting to the dead member, fails a TLS handshake it started, and Akka.Remote
    /// 1.5.74 answers that by shutting the whole node down. Returns once the server says it kept running.
    /// The server must be started with <see cref="QuickRetries"/>: with Akka's 5 s between attempts to reach a
    /// lost node, the dead member was often removed before the server tried its port again.
    /// </summary>
    private PortThatCloses HoldTheServer(RunningDbp server, string[] join)
    {
        int port = FreeLoopbackPort();
        using (var victim = new RunningDbp(_dir, [.. join, "--name", "victim", "--port", port.ToString(CultureInfo.InvariantCulture)]))
        {
            victim.WaitFor("joined the server at", TimeSpan.FromMinutes(1));
            victim.KillHard();
        }
        var closer = new PortThatCloses(port);
        server.WaitFor("kept this node running after a failed outbound TLS handshake", TimeSpan.FromMinutes(1));
        return closer;
    }

    /// <summary>A cluster config whose nodes try a lost peer again after 100 ms, not 5 s.</summary>
    private string[] QuickRetries()
    {
        string file = Path.Combine(_dir, "quick-retries.hocon");
        File.WriteAllText(file, "akka.remote.retry-gate-closed-for = 100ms\n");
        return ["--cluster-config", file];
    }

    private sealed class PortThatCloses : IDisposable
    {
        private readonly System.Net.Sockets.TcpListener _listener;
        private readonly Thread _thread;

        public PortThatCloses(int port)
        {
            _listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, port);
            _listener.Start();
            _thread = new Thread(() =>
            {
                try
                {
                    while (true)
                    {
                        using System.Net.Sockets.Socket accepted = _listener.AcceptSocket();
                    }
                }
                catch (Exception e) when (e is System.Net.Sockets.SocketException or InvalidOperationException or ObjectDisposedException)
                {
                    // Stopped.
                }
            }) { IsBackground = true };
            _thread.Start();
        }

        public void Dispose()
        {
            _listener.Stop();
            _thread.Join();
        }
    }

    [IntegrationFact("multiprocess")]
    public void AFailedOutboundHandshake_KeepsTheServerRunning_AndItTrainsThePlainTrainersBytes()
    {
        string local = Path.Combine(_dir, "local.safetensors"), clustered = Path.Combine(_dir, "cluster.safetensors");
        Assert.Equal(0, DbpProcess.Run(_dir, ["train", .. Run, "--workers", "2", "--out", local, "--progress", "none"]).ExitCode);
        using var server = new RunningDbp(_dir, Serve([.. Run, .. QuickRetries(), "--min-workers", "2", "--out", clustered, "--progress", "plain"]));
        string[] join = JoinCommand(server);
        using PortThatCloses closer = HoldTheServer(server, join);
        using var w1 = new RunningDbp(_dir, [.. join, "--name", "w1"]);
        using var w2 = new RunningDbp(_dir, [.. join, "--name", "w2"]);
        Assert.Equal(0, server.WaitForExit(TimeSpan.FromMinutes(3)));
        Assert.Equal(0, w1.WaitForExit(TimeSpan.FromSeconds(30)));
        Assert.Equal(0, w2.WaitForExit(TimeSpan.FromSeconds(30)));
        Assert.Equal(File.ReadAllBytes(local), File.ReadAllBytes(clustered));
    }

    /// <summary>SIGTERM stops a held server at once (Akka's own exit hook, which waited on the held shutdown inside the signal handler, is off).</summary>
    [IntegrationFact("multiprocess")]
    public void AHeldServer_StopsOnSigterm()
    {
        using var server = new RunningDbp(_dir, Serve([.. Run, .. QuickRetries(), "--min-workers", "2", "--progress", "plain", "--out", Path.Combine(_dir, "unused.safetensors")]));
        using PortThatCloses closer = HoldTheServer(server, JoinCommand(server));
        server.Terminate();
        Assert.Equal(143, server.WaitForExit(TimeSpan.FromSeconds(60)));
        Assert.DoesNotContain("Unhandled exception", server.Output);
    }

    /// <summary>
    /// With one server and one worker, the worker's death leaves the server alone in the cluster. The
    /// default split-brain strategy (keep-majority) could down the server here; keep-oldest with
    /// down-if-alone off must keep it, and a new worker must be able to finish the run.
    /// </summary>
    [IntegrationFact("multiprocess")]
    public void OnlyWorkerKilled_TheServerSurvives_AndANewWorkerFinishesTheRun()
    {
        string local = Path.Combine(_dir, "local.safetensors"), clustered = Path.Combine(_dir, "cluster.safetensors");
        Assert.Equal(0, DbpProcess.Run(_dir, ["train", .. Run, "--workers", "1", "--out", local, "--progress", "none"]).ExitCode);
        using var server = new RunningDbp(_dir, Serve([.. Run, "--min-workers", "1", "--out", clustered, "--progress", "plain"]));
        string[] join = JoinCommand(server);
        using var only = new RunningDbp(_dir, [.. join, "--name", "only"]);
        server.WaitFor(@"^epoch\s+5\b", TimeSpan.FromMinutes(2));
        only.KillHard();
        server.WaitFor("worker only died", TimeSpan.FromSeconds(30));
        Thread.Sleep(2000); // the resolver has decided by now; the server must still be up
        Assert.False(server.HasExited, server.Output);
        using var replacement = new RunningDbp(_dir, [.. join, "--name", "replacement"]);
        Assert.Equal(0, server.WaitForExit(TimeSpan.FromMinutes(3)));
        Assert.Equal(0, replacement.WaitForExit(TimeSpan.FromSeconds(30)));
        Assert.Equal(File.ReadAllBytes(local), File.ReadAllBytes(clustered));
    }

    [IntegrationFact("multiprocess")]
    public void WorkerWithoutFiles_StreamsTheData_AndTheServerRefusesDifferentData()
    {
        string csv = Path.Combine(_dir, "data.csv"), other = Path.Combine(_dir, "other.csv");
        var lines = new List<string> { "a,b,c" };
        for (int i = 0; i < 300; i++) lines.Add(string.Create(CultureInfo.InvariantCulture, $"{i % 7},{(i * 3) % 11},{(i % 3 == 0 ? "x" : "y")}"));
        File.WriteAllLines(csv, lines);
        lines[5] = "1,1,x";
        File.WriteAllLines(other, lines);
        string model = Path.Combine(_dir, "m.safetensors"), local = Path.Combine(_dir, "l.safetensors");
        string[] run = ["--data", csv, "--epochs", "30", "--layers", "8"];
        Assert.Equal(0, DbpProcess.Run(_dir, ["train", .. run, "--workers", "1", "--out", local, "--progress", "none"]).ExitCode);

        using var server = new RunningDbp(_dir, Serve([.. run, "--min-workers", "1", "--out", model, "--progress", "none"]));
        string[] join = JoinCommand(server);
        using var odd = new RunningDbp(_dir, [.. join, "--data", other, "--name", "odd"]);
        Assert.Equal(2, odd.WaitForExit(TimeSpan.FromMinutes(1)));
        Assert.Contains("different training data", odd.Output);
        server.WaitFor("refused odd: it loaded different training data", TimeSpan.FromSeconds(10));

        using var streamed = new RunningDbp(_dir, [.. join, "--stream-data", "--name", "streamed"]);
        Assert.Equal(0, server.WaitForExit(TimeSpan.FromMinutes(2)));
        Assert.Equal(0, streamed.WaitForExit(TimeSpan.FromSeconds(30)));
        Assert.Equal(File.ReadAllBytes(local), File.ReadAllBytes(model));
    }

    /// <summary>
    /// The token flow end to end: wrong and absent tokens are refused with one line on both sides (exit 2 for
    /// the worker); the token file `dbp serve --token-file` wrote lets a worker join; a second server start
    /// with the same state directory keeps the token. Reports the time from `dbp worker` start to training.
    /// </summary>
    [IntegrationFact("multiprocess")]
    public void TokenFlow_RightTokenJoins_WrongOrMissingTokenIsRefusedOnBothSides()
    {
        string local = Path.Combine(_dir, "local.safetensors"), clustered = Path.Combine(_dir, "cluster.safetensors");
        string[] run = ["--epochs", "20", "--layers", "32"];
        Assert.Equal(0, DbpProcess.Run(_dir, ["train", .. run, "--workers", "1", "--out", local, "--progress", "none"]).ExitCode);
        using var server = new RunningDbp(_dir, Serve([.. run, "--min-workers", "1", "--out", clustered, "--progress", "plain"]));
        string[] join = JoinCommand(server);
        string token = File.ReadAllText(TokenFile).Trim();
        if (!OperatingSystem.IsWindows())
        {
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(TokenFile));
        }
        Assert.DoesNotContain(token, server.Output); // with --token-file the secret stays out of the log

        string[] bare = join.TakeWhile(a => a != "--token-file").ToArray();
        string wrong = token[..^64] + new string('0', 64);
        DbpResult refused = DbpProcess.Run(_dir, [.. bare, "--token", wrong, "--name", "mallory"]);
        Assert.Equal(2, refused.ExitCode);
        Assert.Contains("the server refused this node: wrong join token", refused.Stderr);
        server.WaitFor("refused to enroll a node from 127.0.0.1:[0-9]+: wrong join token", TimeSpan.FromSeconds(10));
        DbpResult missing = DbpProcess.Run(_dir, [.. bare, "--name", "nobody"]);
        Assert.Equal(2, missing.ExitCode);
        Assert.Contains("a join token is required", missing.Stderr);

        using var worker = new RunningDbp(_dir, [.. join, "--name", "invited"]);
        string first = worker.WaitFor(@"first work \(step \d+\) ([0-9.]+) s after this process started", TimeSpan.FromMinutes(1)).Groups[1].Value;
        output.WriteLine($"dbp worker --token-file: first step computed {first} s after the process started (runtime start, enrollment, TLS, cluster join, data load, registration)");
        Assert.Equal(0, server.WaitForExit(TimeSpan.FromMinutes(2)));
        Assert.Equal(0, worker.WaitForExit(TimeSpan.FromSeconds(30)));
        Assert.Equal(File.ReadAllBytes(local), File.ReadAllBytes(clustered));

        // A restart with the same state directory reuses the CA and the token.
        using var again = new RunningDbp(_dir, Serve([.. run, "--min-workers", "1", "--progress", "none"]));
        JoinCommand(again);
        Assert.Equal(token, File.ReadAllText(TokenFile).Trim());
    }

    /// <summary>
    /// The server's process is SIGKILLed mid-run and started again with the very same command line (what a
    /// supervisor does): it resumes from its --checkpoint, the workers rejoin by themselves, and the model
    /// has the undisturbed run's bytes. Reports the time from the kill to the first step computed again.
    /// </summary>
    /// <summary>
    /// Parameter shards on the worker nodes (--server-shards 3 over two worker processes: one hosts two shards,
    /// the other one) give the plain trainer's bytes. SIGKILL of w2 loses its shard: the server stops as if it had
    /// died (exit 1, the workers are not told to exit), its restart with the same command line resumes from the
    /// checkpoint, w1 rejoins, a new w3 joins, the shards are placed anew, and the model keeps its bytes.
    /// </summary>
    [IntegrationFact("multiprocess")]
    public void ShardsOnTheWorkerNodes_ThroughTheLossOfOne_GiveThePlainTrainersBytes()
    {
        string plain = Path.Combine(_dir, "plain.safetensors"), clustered = Path.Combine(_dir, "cluster.safetensors");
        string checkpoint = Path.Combine(_dir, "checkpoint.safetensors");
        Assert.Equal(0, DbpProcess.Run(_dir, ["train", .. Run, "--workers", "0", "--out", plain, "--progress", "none"]).ExitCode);
        int port = FreeLoopbackPort();
        string[] serve = ServeOn(port, [.. Run, "--server-shards", "3", "--min-workers", "2", "--out", clustered, "--checkpoint", checkpoint, "--checkpoint-every", "50", "--progress", "plain"]);
        using var first = new RunningDbp(_dir, serve);
        string[] join = JoinCommand(first);
        using var w1 = new RunningDbp(_dir, [.. join, "--name", "w1"]);
        using var w2 = new RunningDbp(_dir, [.. join, "--name", "w2"]);
        first.WaitFor(@"^epoch\s+10\b", TimeSpan.FromMinutes(2));
        Assert.Contains("hosting parameter shard", w2.Output);
        w2.KillHard();
        Assert.True(first.WaitForExit(TimeSpan.FromSeconds(90)) == 1, first.Output);
        Assert.Contains("restart the server with the same command line to resume from its checkpoint", first.Output);
        Assert.DoesNotContain("training failed on the server", w1.Output);

        using var second = new RunningDbp(_dir, serve);
        second.WaitFor(@"resuming from .* at step (\d+)", TimeSpan.FromSeconds(60));
        using var w3 = new RunningDbp(_dir, [.. join, "--name", "w3"]);
        Assert.True(second.WaitForExit(TimeSpan.FromMinutes(3)) == 0, second.Output);
        Assert.True(w1.WaitForExit(TimeSpan.FromSeconds(30)) == 0, w1.Output);
        Assert.True(w3.WaitForExit(TimeSpan.FromSeconds(30)) == 0, w3.Output);
        Assert.Equal(File.ReadAllBytes(plain), File.ReadAllBytes(clustered));
    }

    [IntegrationFact("multiprocess")]
    public void ServerKilledAndRestartedWithTheSameCommandLine_WorkersRejoin_SameBytes() => ServerKilledAndRestarted([]);

    /// <summary>The same with local steps: the checkpoint falls after a round, the restarted server deals the next round.</summary>
    [IntegrationFact("multiprocess")]
    public void ServerKilledAndRestarted_WithLocalSteps_SameBytes() => ServerKilledAndRestarted(["--replicas", "3", "--local-steps", "7"]);

    private void ServerKilledAndRestarted(string[] extra)
    {
        string[] Run = [.. ClusterProcessTests.Run, .. extra];
        string local = Path.Combine(_dir, "local.safetensors"), clustered = Path.Combine(_dir, "cluster.safetensors");
        string checkpoint = Path.Combine(_dir, "checkpoint.safetensors");
        Assert.Equal(0, DbpProcess.Run(_dir, ["train", .. Run, "--workers", "2", "--out", local, "--progress", "none"]).ExitCode);
        // A fixed port: the workers knock at the same address after the restart.
        int port = FreeLoopbackPort();
        string metrics = Path.Combine(_dir, "metrics.jsonl");
        string[] serve = ServeOn(port, [.. Run, "--min-workers", "2", "--out", clustered, "--metrics", metrics, "--checkpoint", checkpoint, "--checkpoint-every", "50", "--progress", "plain"]);
        using var first = new RunningDbp(_dir, serve);
        string[] join = JoinCommand(first);
        using var w1 = new RunningDbp(_dir, [.. join, "--name", "w1"]);
        using var w2 = new RunningDbp(_dir, [.. join, "--name", "w2"]);
        first.WaitFor(@"^epoch\s+10\b", TimeSpan.FromMinutes(2));
        long stepBeforeKill = first.Lines.Select(l => System.Text.RegularExpressions.Regex.Match(l, @"^epoch\s+\d+\s+step\s+(\d+)"))
            .Where(m => m.Success).Max(m => long.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture));
        first.KillHard();
        var clock = Stopwatch.StartNew();
        int firstWorkLines = w1.Lines.Count(l => l.Contains("first work", StringComparison.Ordinal));

        using var second = new RunningDbp(_dir, serve);
        long resumedAt = long.Parse(second.WaitFor(@"resuming from .* at step (\d+)", TimeSpan.FromSeconds(60)).Groups[1].Value, CultureInfo.InvariantCulture);
        // The epoch's line is printed before its checkpoint is asked for (its metrics line must be on disk first),
        // so the kill may land before that checkpoint: the restart resumes from it or from the one before.
        Assert.True(resumedAt >= stepBeforeKill - 50 && resumedAt <= stepBeforeKill + 50 + 10, $"resumed at step {resumedAt}; the last epoch printed before the kill ended at {stepBeforeKill}");
        w1.WaitFor("rejoining when it answers again", TimeSpan.FromSeconds(30));
        while (w1.Lines.Count(l => l.Contains("first work", StringComparison.Ordinal)) <= firstWorkLines && clock.Elapsed < TimeSpan.FromMinutes(1))
        {
            Thread.Sleep(20);
        }
        TimeSpan computingAgain = clock.Elapsed;
        output.WriteLine($"server SIGKILL to w1 computing again for the restarted server: {computingAgain.TotalSeconds:F2} s (restart started at once); resumed at step {resumedAt}, last epoch end before the kill {stepBeforeKill}");
        Assert.True(computingAgain < TimeSpan.FromMinutes(1), "w1 never computed for the restarted server");
        Assert.Equal(0, second.WaitForExit(TimeSpan.FromMinutes(3)));
        Assert.True(w1.WaitForExit(TimeSpan.FromSeconds(30)) == 0, w1.Output);
        Assert.True(w2.WaitForExit(TimeSpan.FromSeconds(30)) == 0, w2.Output);
        Assert.Equal(File.ReadAllBytes(local), File.ReadAllBytes(clustered));
        // The metrics keep the epochs from before the crash: one line per epoch, 1..120, in order.
        Assert.Equal(Enumerable.Range(1, 120), File.ReadAllLines(metrics).Select(l => System.Text.Json.JsonDocument.Parse(l).RootElement.GetProperty("epoch").GetInt32()));
    }
}
