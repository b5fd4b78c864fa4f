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

    private string WriteCsv(Dataset data)
    {
        var csv = new StringBuilder();
        csv.AppendLine(string.Join(',', Enumerable.Range(0, data.Features).Select(j => $"f{j}").Append("label")));
        for (int r = 0; r < data.Rows; r++)
        {
            csv.AppendLine(string.Join(',', data.Row(r).ToArray().Select(v => v.ToString("R", CultureInfo.InvariantCulture)).Append(data.Classes[data.Labels[r]])));
        }
        string path = Path.Combine(_dir, "blobs.csv");
        File.WriteAllText(path, csv.ToString());
        return path;
    }

    private static NodeSettings Loopback(params string[] seeds) => new() { BindHost = "127.0.0.1", Port = 0, BulkPort = 0, SeedNodes = seeds };

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
        await using ClusterServer server = ClusterServer.Start(session, Loopback(), minimumWorkers: 3, NullObserver.Instance, null, new ServerData(path, null, 0.2));
        string seed = $"127.0.0.1:{server.Address.Port}";
        Task<WorkerExit>[] workers =
        [
            ClusterWorker.RunAsync(Loopback(seed), new WorkerNodeOptions("node-1", null, StreamData: false)),
            ClusterWorker.RunAsync(Loopback(seed), new WorkerNodeOptions("node-2", path, StreamData: false)),
            ClusterWorker.RunAsync(Loopback(seed), new WorkerNodeOptions("node-3", null, StreamData: true)),
        ];
        TrainingOutcome outcome = await server.Completion.WaitAsync(TimeSpan.FromMinutes(2));
        await server.AnnounceFinishAsync(new TrainingFinished(outcome.Steps, true, "done"));
        WorkerExit[] exits = await Task.WhenAll(workers).WaitAsync(TimeSpan.FromSeconds(30));

        Fixtures.AssertSameBits(oracle, session.Parameters, "server + 3 worker nodes over loopback TCP");
        Assert.All(exits, e => Assert.Equal(0, e.ExitCode));
        Assert.Equal(3, outcome.Epochs[^1].Workers);
        Assert.True(server.Channel.BytesSent > 0 && server.Channel.BytesReceived > 0, "tensors must travel on the bulk channel");
    }

    [Fact]
    public async Task WithTls_AkkaAndTheBulkChannelAreEncrypted_AndTheBitsAreTheSame()
    {
        // A self-signed cluster certificate shared by both nodes (PKCS#12, as --tls-certificate takes).
        using var key = System.Security.Cryptography.RSA.Create(2048);
        var request = new System.Security.Cryptography.X509Certificates.CertificateRequest("CN=dbp-cluster", key,
            System.Security.Cryptography.HashAlgorithmName.SHA256, System.Security.Cryptography.RSASignaturePadding.Pkcs1);
        using var certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
        string pfx = Path.Combine(_dir, "cluster.pfx");
        File.WriteAllBytes(pfx, certificate.Export(System.Security.Cryptography.X509Certificates.X509ContentType.Pkcs12, "secret"));

        string path = WriteCsv(Fixtures.Blobs(160));
        Dataset data = CsvReader.Read(path, new CsvOptions());
        float[] oracle = Fixtures.PlainTrainer(Fixtures.Config(), data);
        TrainingSession session = TrainingSession.Prepare(Fixtures.Config(), data, null, 0.2);
        NodeSettings Tls(params string[] seeds) => Loopback(seeds) with { TlsCertificate = pfx, TlsPassword = "secret" };
        await using ClusterServer server = ClusterServer.Start(session, Tls(), minimumWorkers: 1, NullObserver.Instance, null, new ServerData(path, null, 0.2));
        Assert.Equal("akka.ssl.tcp", server.Address.Protocol);
        Task<WorkerExit> worker = ClusterWorker.RunAsync(Tls($"127.0.0.1:{server.Address.Port}"), new WorkerNodeOptions("tls-node", null, false));
        TrainingOutcome outcome = await server.Completion.WaitAsync(TimeSpan.FromMinutes(2));
        await server.AnnounceFinishAsync(new TrainingFinished(outcome.Steps, true, "done"));
        Assert.Equal(0, (await worker.WaitAsync(TimeSpan.FromSeconds(30))).ExitCode);
        Fixtures.AssertSameBits(oracle, session.Parameters, "TLS cluster");
        Assert.True(server.Channel.BytesReceived > 0);
    }

    [Fact]
    public async Task WorkerWithDifferentData_IsRefused_WithAClearErrorOnItsSide()
    {
        string path = WriteCsv(Fixtures.Blobs(120));
        string other = Path.Combine(_dir, "other.csv");
        File.WriteAllText(other, File.ReadAllText(path).Replace("class1", "class2", StringComparison.Ordinal));
        TrainingSession session = TrainingSession.Prepare(Fixtures.Config(), CsvReader.Read(path, new CsvOptions()), null, 0.2);
        await using ClusterServer server = ClusterServer.Start(session, Loopback(), minimumWorkers: 1, NullObserver.Instance, null, new ServerData(path, null, 0.2));
        WorkerExit exit = await ClusterWorker.RunAsync(Loopback($"127.0.0.1:{server.Address.Port}"), new WorkerNodeOptions("odd", other, false)).WaitAsync(TimeSpan.FromMinutes(1));
        Assert.Equal(2, exit.ExitCode);
        Assert.Contains("different training data", exit.Message);
    }
}
