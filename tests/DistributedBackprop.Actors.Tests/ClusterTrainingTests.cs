using Akka.Actor;
using System.Globalization;
using System.Text;
using DistributedBackprop.Actors.Cluster;
using DistributedBackprop.Actors.Transport;
using DistributedBackprop.Data;
using DistributedBackprop.Engine;

namespace DistributedBackprop.Actors.Tests;

/// <summary>
/// Several ActorSystems in this process forming a real cluster over loopback TCP (Akka.Remote for control,
/// the bulk channel for tensors): training across nodes gives local mode's bits.
/// </summary>
public sealed class ClusterTrainingTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("dbp-cluster-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string WriteCsv(Dataset data) => Fixtures.WriteCsv(data, Path.Combine(_dir, "blobs.csv"));

    private NodeSettings ServerSettings() => Loopback.Server(_dir);

    private static NodeSettings WorkerSettings(ClusterServer server) => Loopback.Worker(server);

    [Fact]
    public async Task ServerAndThreeWorkerNodes_GiveTheBitsOfLocalMode_OnBlockingSockets()
    {
        string path = WriteCsv(Fixtures.Blobs(200));
        TrainingConfig config = Fixtures.Config();
        Dataset data = CsvReader.Read(path, new CsvOptions());
        float[] oracle;
        {
            TrainingSession local = TrainingSession.Prepare(config, data, null, 0.2);
            using var trainer = new Trainer(local);
            trainer.Run(NullObserver.Instance);
            oracle = local.Parameters;
        }

        TrainingSession session = TrainingSession.Prepare(config, data, null, 0.2);
        await using ClusterServer server = ClusterServer.Start(session, ServerSettings(), minimumWorkers: 3, NullObserver.Instance, null, new ServerData(path, null, 0.2));
        Assert.Equal("akka.ssl.tcp", server.Address.Protocol);
        Task<WorkerExit>[] workers =
        [
            ClusterWorker.RunAsync(WorkerSettings(server), new WorkerNodeOptions("node-1", null, StreamData: false)),
            ClusterWorker.RunAsync(WorkerSettings(server), new WorkerNodeOptions("node-2", path, StreamData: false)),
            ClusterWorker.RunAsync(WorkerSettings(server), new WorkerNodeOptions("node-3", null, StreamData: true)),
        ];
        TrainingOutcome outcome = await server.Completion.WaitAsync(TimeSpan.FromMinutes(2));
        // Both ends of every connection to the server's bulk channel are in this process, still open: the server's
        // accepted sockets (TLS as server) and the workers' (TLS as client) must never have gone non-blocking.
        List<(string Connection, bool NonBlocking)> bulk = OpenTcpSocketsOnPort(BulkChannel.ParseEndpoint(server.Channel.Endpoint).Port);
        await server.AnnounceFinishAsync(new TrainingFinished(outcome.Steps, true, "done"));
        WorkerExit[] exits = await Task.WhenAll(workers).WaitAsync(TimeSpan.FromSeconds(30));

        Assert.True(bulk.Count >= 6, $"expected both ends of 3 workers' connections to the bulk channel, found {bulk.Count}");
        Assert.All(bulk, b => Assert.False(b.NonBlocking, $"bulk channel socket {b.Connection} is non-blocking: an asynchronous call on it makes every read go through epoll and the thread pool"));
        Fixtures.AssertSameBits(oracle, session.Parameters, "server + 3 worker nodes over loopback TCP");
        Assert.All(exits, e => Assert.Equal(0, e.ExitCode));
        Assert.Equal(3, outcome.Epochs[^1].Workers);
        Assert.True(server.Channel.BytesSent > 0 && server.Channel.BytesReceived > 0, "tensors must travel on the bulk channel");
        Assert.Equal(3, server.Desk.Issued);
        Assert.Equal(0, server.Channel.Refusals);
    }

    /// <summary>
    /// This process's established TCP sockets with <paramref name="port"/> at either end, and whether each file
    /// descriptor has O_NONBLOCK (from /proc: net/tcp and tcp6 for the connections' inodes, fd for ours, fdinfo
    /// for the flags). .NET sets O_NONBLOCK at a socket's first asynchronous call and never clears it.
    /// </summary>
    private static List<(string Connection, bool NonBlocking)> OpenTcpSocketsOnPort(int port)
    {
        const int ONonBlock = 0x800; // 04000 octal, Linux
        var connections = new Dictionary<string, string>();
        foreach (string table in new[] { "/proc/self/net/tcp", "/proc/self/net/tcp6" })
        {
            foreach (string line in File.ReadLines(table).Skip(1))
            {
                string[] f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                int local = Convert.ToInt32(f[1][(f[1].LastIndexOf(':') + 1)..], 16), remote = Convert.ToInt32(f[2][(f[2].LastIndexOf(':') + 1)..], 16);
                if (f[3] == "01" && (local == port || remote == port))
                {
                    connections[f[9]] = $"{local}->{remote}";
                }
            }
        }
        var found = new List<(string, bool)>();
        foreach (string fd in Directory.GetFiles("/proc/self/fd"))
        {
            string? target = new FileInfo(fd).LinkTarget;
            if (target is null || !target.StartsWith("socket:[", StringComparison.Ordinal) || !connections.TryGetValue(target[8..^1], out string? connection))
            {
                continue;
            }
            string flags = File.ReadLines($"/proc/self/fdinfo/{Path.GetFileName(fd)}").First(l => l.StartsWith("flags:", StringComparison.Ordinal));
            found.Add((connection, (Convert.ToInt32(flags["flags:".Length..].Trim(), 8) & ONonBlock) != 0));
        }
        return found;
    }

    /// <summary>
    /// Three parameter shards on two worker nodes (one hosts two), and a first layer of 300 × 300 weights, so its
    /// gradient is released in two blocks and each worker sends the blocks another node's shard waits for first:
    /// the pieces, summed by each shard as they complete, give the plain trainer's bits.
    /// </summary>
    [Fact]
    public async Task ShardsOnTheWorkerNodes_TakingGradientsInPiecesAsReleased_GiveThePlainTrainersBits()
    {
        string path = WriteCsv(Fixtures.Blobs(120, features: 300));
        Dataset data = CsvReader.Read(path, new CsvOptions());
        TrainingConfig config = Fixtures.Config(epochs: 2) with { HiddenLayers = [300] };
        float[] oracle = Fixtures.PlainTrainer(config, data);
        TrainingSession session = TrainingSession.Prepare(config, data, null, 0.2);
        Assert.Equal(2, Network.ReleaseBlocks.BlockCount(session.Architecture, 0));
        await using ClusterServer server = ClusterServer.Start(session, ServerSettings(), minimumWorkers: 2, NullObserver.Instance, null, new ServerData(path, null, 0.2), serverShards: 3);
        Task<WorkerExit>[] workers =
        [
            ClusterWorker.RunAsync(WorkerSettings(server), new WorkerNodeOptions("node-1", path, StreamData: false)),
            ClusterWorker.RunAsync(WorkerSettings(server), new WorkerNodeOptions("node-2", path, StreamData: false)),
        ];
        TrainingOutcome outcome = await server.Completion.WaitAsync(TimeSpan.FromMinutes(2));
        await server.AnnounceFinishAsync(new TrainingFinished(outcome.Steps, true, "done"));
        WorkerExit[] exits = await Task.WhenAll(workers).WaitAsync(TimeSpan.FromSeconds(30));
        Fixtures.AssertSameBits(oracle, session.Parameters, "3 shards on 2 worker nodes, gradients in released pieces");
        Assert.All(exits, e => Assert.Equal(0, e.ExitCode));
        Assert.Equal(0, server.Channel.Refusals);
    }

    [Fact]
    public async Task Insecure_PlainTcpWithoutToken_GivesTheSameBits()
    {
        string path = WriteCsv(Fixtures.Blobs(160));
        Dataset data = CsvReader.Read(path, new CsvOptions());
        float[] oracle = Fixtures.PlainTrainer(Fixtures.Config(), data);
        TrainingSession session = TrainingSession.Prepare(Fixtures.Config(), data, null, 0.2);
        await using ClusterServer server = ClusterServer.Start(session, ServerSettings() with { Insecure = true }, minimumWorkers: 1, NullObserver.Instance, null, new ServerData(path, null, 0.2));
        Assert.Equal("akka.tcp", server.Address.Protocol);
        Assert.Null(server.Authority);
        Task<WorkerExit> worker = ClusterWorker.RunAsync(WorkerSettings(server) with { Insecure = true, Token = null }, new WorkerNodeOptions("plain-node", null, false));
        TrainingOutcome outcome = await server.Completion.WaitAsync(TimeSpan.FromMinutes(2));
        await server.AnnounceFinishAsync(new TrainingFinished(outcome.Steps, true, "done"));
        Assert.Equal(0, (await worker.WaitAsync(TimeSpan.FromSeconds(30))).ExitCode);
        Fixtures.AssertSameBits(oracle, session.Parameters, "insecure cluster");
    }

    /// <summary>
    /// A node's Akka port is chosen free, then released until the node binds it (its certificate names the
    /// address first): another process can take it meanwhile. Here the first port handed to the server and to
    /// the worker is held by a listener: each must choose another (the worker says so) and the run must have the
    /// plain trainer's bits. A port the user pinned is not chosen again: it is one error naming the option.
    /// </summary>
    [Fact]
    public async Task ChosenPortsTakenBeforeTheBind_TheNodesChooseAgain_APinnedOneIsAnError()
    {
        string path = WriteCsv(Fixtures.Blobs(160));
        Dataset data = CsvReader.Read(path, new CsvOptions());
        float[] oracle = Fixtures.PlainTrainer(Fixtures.Config(), data);
        using var squatter = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        squatter.Start();
        int taken = ((System.Net.IPEndPoint)squatter.LocalEndpoint).Port;
        int serverChoices = 0, workerChoices = 0;
        Func<string, int> TakenFirst(Func<int> count) => host => count() == 1 ? taken : new NodeSettings().FreePort(host);

        TrainingSession session = TrainingSession.Prepare(Fixtures.Config(), data, null, 0.2);
        await using ClusterServer server = ClusterServer.Start(session, ServerSettings() with { FreePort = TakenFirst(() => Interlocked.Increment(ref serverChoices)) },
            minimumWorkers: 1, NullObserver.Instance, null, new ServerData(path, null, 0.2));
        Assert.InRange(serverChoices, 2, PortUnavailableException.ChoicesBeforeGivingUp); // 2 unless a parallel test took the second too
        Assert.NotEqual(taken, server.Address.Port);

        PortUnavailableException pinned = await Assert.ThrowsAsync<PortUnavailableException>(() =>
            ClusterWorker.RunAsync(WorkerSettings(server) with { Port = taken }, new WorkerNodeOptions("pinned", null, false)).WaitAsync(TimeSpan.FromMinutes(1)));
        Assert.Equal($"--port: 127.0.0.1:{taken} is already in use by another process", pinned.Message);
        // Found by the node's own trial of the port, not by a started ActorSystem's remoting (whose dying words can
        // reach standard output after the logger stops): a bare socket refusal, not Akka's nest of aggregates.
        Assert.IsType<System.Net.Sockets.SocketException>(pinned.InnerException);
        int hopelessChoices = 0;
        IOException workerGaveUp = await Assert.ThrowsAsync<IOException>(() => ClusterWorker.RunAsync(
            WorkerSettings(server) with { FreePort = _ => { Interlocked.Increment(ref hopelessChoices); return taken; } }, new WorkerNodeOptions("hopeless", null, false)).WaitAsync(TimeSpan.FromMinutes(1)));
        Assert.StartsWith("5 ports chosen free on 127.0.0.1 were each taken by another process before this node could bind them", workerGaveUp.Message);
        Assert.Equal(PortUnavailableException.ChoicesBeforeGivingUp, hopelessChoices);

        var announced = new System.Collections.Concurrent.ConcurrentQueue<string>();
        Task<WorkerExit> worker = ClusterWorker.RunAsync(WorkerSettings(server) with { FreePort = TakenFirst(() => Interlocked.Increment(ref workerChoices)) },
            new WorkerNodeOptions("unlucky", null, false, announced.Enqueue));
        await Task.WhenAny(server.Completion, worker).WaitAsync(TimeSpan.FromMinutes(2));
        if (worker.IsCompleted)
        {
            Assert.Fail($"the worker ended before training did: {(await worker).Message}");
        }
        TrainingOutcome outcome = await server.Completion;
        await server.AnnounceFinishAsync(new TrainingFinished(outcome.Steps, true, "done"));
        Assert.Equal(0, (await worker.WaitAsync(TimeSpan.FromSeconds(30))).ExitCode);
        Assert.Contains($"the port this node chose, {taken}, was taken by another process before it bound it; choosing another", announced);
        Assert.Contains(announced, l => l.StartsWith($"joined the server at {server.Channel.Endpoint}; training ", StringComparison.Ordinal));
        Assert.InRange(workerChoices, 2, PortUnavailableException.ChoicesBeforeGivingUp);
        Fixtures.AssertSameBits(oracle, session.Parameters, "nodes whose first chosen port was taken");

        // Every port handed out taken: each node gives up after its fifth choice, with a failure that is not the user's.
        int alwaysTaken = 0;
        NodeSettings unlucky = ServerSettings() with { FreePort = _ => { Interlocked.Increment(ref alwaysTaken); return taken; } };
        IOException serverGaveUp = Assert.Throws<IOException>(() => ClusterServer.Start(TrainingSession.Prepare(Fixtures.Config(), data, null, 0.2), unlucky,
            minimumWorkers: 1, NullObserver.Instance, null, new ServerData(path, null, 0.2)));
        Assert.Equal($"5 ports chosen free on 127.0.0.1 were each taken by another process before this node could bind them (the last {taken}); something is taking ports as fast as they are freed", serverGaveUp.Message);
        Assert.Equal(PortUnavailableException.ChoicesBeforeGivingUp, alwaysTaken);
    }

    /// <summary>
    /// A join slower than the worker's patience says which stage it is at instead of waiting in silence (CI once saw
    /// a worker never join and print nothing). The node here is alone, its server an address nobody serves: it can
    /// never be a member, so the line must come.
    /// </summary>
    [Fact]
    public async Task ASlowJoin_SaysWhichStageItIsAt()
    {
        using ActorSystem lone = ActorSystem.Create("dbp", Akka.Configuration.ConfigurationFactory.ParseString("""
            akka.actor.provider = cluster
            akka.remote.dot-netty.tcp { hostname = "127.0.0.1", port = 0 }
            akka.cluster.roles = ["worker"]
            """).WithFallback(LocalTraining.LoadConfig()));
        var announced = new System.Collections.Concurrent.BlockingCollection<string>();
        var nobody = new Address("akka.tcp", "dbp", "127.0.0.1", 9);
        var exit = new TaskCompletionSource<WorkerExit>();
        lone.ActorOf(WorkerAgent.Props(new WorkerNodeOptions("slow", null, false, announced.Add) { AdmissionPatience = TimeSpan.FromMilliseconds(100) },
            new ServerContact(nobody, "127.0.0.1:10"), exit));
        Assert.True(announced.TryTake(out string? line, TimeSpan.FromSeconds(30)), "no line within 30 s");
        Assert.Equal($"after 0.1 s this node is not yet a member of the server's cluster at {nobody} (the Akka join; still trying)", line);
        await lone.Terminate();
    }

    [Fact]
    public async Task WorkerWithDifferentData_IsRefused_WithAClearErrorOnItsSide()
    {
        string path = WriteCsv(Fixtures.Blobs(120));
        string other = Path.Combine(_dir, "other.csv");
        File.WriteAllText(other, File.ReadAllText(path).Replace("class1", "class2", StringComparison.Ordinal));
        TrainingSession session = TrainingSession.Prepare(Fixtures.Config(), CsvReader.Read(path, new CsvOptions()), null, 0.2);
        await using ClusterServer server = ClusterServer.Start(session, ServerSettings(), minimumWorkers: 1, NullObserver.Instance, null, new ServerData(path, null, 0.2));
        WorkerExit exit = await ClusterWorker.RunAsync(WorkerSettings(server), new WorkerNodeOptions("odd", other, false)).WaitAsync(TimeSpan.FromMinutes(1));
        Assert.Equal(2, exit.ExitCode);
        Assert.Contains("different training data", exit.Message);
    }
}
