using System.Globalization;
using System.Text;
using DistributedBackprop.Actors.Cluster;
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
    public async Task ServerAndThreeWorkerNodes_GiveTheBitsOfLocalMode()
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
        await server.AnnounceFinishAsync(new TrainingFinished(outcome.Steps, true, "done"));
        WorkerExit[] exits = await Task.WhenAll(workers).WaitAsync(TimeSpan.FromSeconds(30));

        Fixtures.AssertSameBits(oracle, session.Parameters, "server + 3 worker nodes over loopback TCP");
        Assert.All(exits, e => Assert.Equal(0, e.ExitCode));
        Assert.Equal(3, outcome.Epochs[^1].Workers);
        Assert.True(server.Channel.BytesSent > 0 && server.Channel.BytesReceived > 0, "tensors must travel on the bulk channel");
        Assert.Equal(3, server.Desk.Issued);
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
