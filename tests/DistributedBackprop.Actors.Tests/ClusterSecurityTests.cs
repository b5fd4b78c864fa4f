using System.Globalization;
using System.Net.Sockets;
using System.Text;
using Akka.Actor;
using Akka.Configuration;
using Akka.Remote.Transport.DotNetty;
using DistributedBackprop.Actors.Cluster;
using DistributedBackprop.Actors.Security;
using DistributedBackprop.Actors.Transport;
using DistributedBackprop.Data;
using DistributedBackprop.Engine;
using DistributedBackprop.Network;
using Xunit.Abstractions;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Actors.Tests;

/// <summary>
/// Attacks on a running in-process cluster over loopback TCP, each by a real stranger: its own ActorSystem
/// (Akka.Remote, Akka.Cluster), its own bulk channel, or raw sockets. Every run must finish with the model
/// bits of an undisturbed run; what the attacker tried must be refused and counted.
/// </summary>
public sealed class ClusterSecurityTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("dbp-security-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private sealed record Run(string DataPath, Dataset Data, TrainingConfig Config, float[] Oracle);

    /// <summary>A run long enough (a few seconds) for attacks to land while it trains.</summary>
    private Run Prepare(int epochs)
    {
        string path = Fixtures.WriteCsv(Fixtures.Blobs(200), Path.Combine(_dir, "blobs.csv"));
        Dataset read = CsvReader.Read(path, new CsvOptions());
        TrainingConfig config = Fixtures.Config(epochs);
        return new Run(path, read, config, Fixtures.PlainTrainer(config, read));
    }

    private ClusterServer StartServer(Run run, bool insecure = false) =>
        ClusterServer.Start(TrainingSession.Prepare(run.Config, run.Data, null, 0.2), Loopback.Server(_dir) with { Insecure = insecure ? true : null },
            minimumWorkers: 1, NullObserver.Instance, null, new ServerData(run.DataPath, null, 0.2));

    private static Task<WorkerExit> StartWorker(ClusterServer server, string name, bool insecure = false) =>
        ClusterWorker.RunAsync(Loopback.Worker(server) with { Insecure = insecure ? true : null }, new WorkerNodeOptions(name, null, false));

    private static async Task<float[]> Finish(ClusterServer server, Task<WorkerExit> worker)
    {
        TrainingOutcome outcome = await server.Completion.WaitAsync(TimeSpan.FromMinutes(3));
        await server.AnnounceFinishAsync(new TrainingFinished(outcome.Steps, true, "done"));
        WorkerExit exit = await worker.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.True(exit.ExitCode == 0, exit.Message);
        return server.Session.Parameters;
    }

    private static Config RogueConfig(string scheme) => ConfigurationFactory.ParseString($$"""
        akka.actor.provider = cluster
        akka.remote.dot-netty.tcp { hostname = "127.0.0.1", port = 0, enable-ssl = {{(scheme == "akka.ssl.tcp" ? "true" : "false")}} }
        akka.cluster.roles = ["worker"]
        """).WithFallback(LocalTraining.LoadConfig());

    [Fact]
    public async Task StrangersWithoutTheToken_CannotEnrollJoinOrReachAnyActor_AndTheRunKeepsItsBits()
    {
        Run run = Prepare(epochs: 40);
        await using ClusterServer server = StartServer(run);
        var (host, bulkPort) = BulkChannel.ParseEndpoint(server.Channel.Endpoint);
        string serverPath = $"{server.Address}{ClusterNaming.ParameterServerPath}";

        // 1. The join handshake with a wrong secret, and with a token of another cluster's CA.
        JoinToken right = server.Authority!.Token;
        var wrongSecret = new JoinToken(right.CaPin, new byte[JoinToken.SecretBytes]);
        var refused = await Assert.ThrowsAsync<EnrollmentRefusedException>(() =>
            Enrollment.EnrollAsync(host, bulkPort, wrongSecret, "mallory", "akka.ssl.tcp://dbp@127.0.0.1:9", CancellationToken.None));
        Assert.Contains("wrong join token", refused.Message);
        ClusterAuthority otherCluster = ClusterAuthority.LoadOrCreate(Path.Combine(_dir, "other-cluster"));
        var impostor = await Assert.ThrowsAsync<EnrollmentRefusedException>(() =>
            Enrollment.EnrollAsync(host, bulkPort, otherCluster.Token, "mallory", "akka.ssl.tcp://dbp@127.0.0.1:9", CancellationToken.None));
        Assert.Contains("not the cluster this join token belongs to", impostor.Message);

        // 2. An Akka node without TLS, and one with a certificate from another cluster's CA that accepts any
        //    server: both try to join the seed and to stop the parameter server.
        using ActorSystem plain = ActorSystem.Create(ClusterNaming.SystemName, RogueConfig("akka.tcp"));
        int foreignPort = new NodeSettings { BindHost = "127.0.0.1", Port = 0 }.ChoosePort("127.0.0.1");
        NodeIdentity foreignIdentity = otherCluster.IssueOwn(ClusterNaming.WorkerRole, "mallory", $"akka.ssl.tcp://dbp@127.0.0.1:{foreignPort}");
        using ActorSystem foreign = ActorSystem.Create(ClusterNaming.SystemName, ActorSystemSetupFor(
            RogueConfig("akka.ssl.tcp").WithFallback(ConfigurationFactory.ParseString($"akka.remote.dot-netty.tcp.port = {foreignPort}")),
            new DotNettySslSetup(foreignIdentity.Certificate, suppressValidation: true, requireMutualAuthentication: true)));
        foreach (ActorSystem rogue in new[] { plain, foreign })
        {
            string scheme = ((ExtendedActorSystem)rogue).Provider.DefaultAddress.Protocol;
            var seed = new Address(scheme, ClusterNaming.SystemName, server.Address.Host, server.Address.Port);
            Akka.Cluster.Cluster.Get(rogue).JoinSeedNodes([seed]);
            ActorSelection target = rogue.ActorSelection($"{seed}{ClusterNaming.ParameterServerPath}");
            target.Tell(PoisonPill.Instance);
            target.Tell(new TrainEpoch(0));
        }

        // 3. Raw sockets: junk on the Akka port, a fake frame on the bulk port (which expects TLS).
        foreach (int port in new[] { server.Address.Port!.Value, bulkPort })
        {
            using var raw = new TcpClient();
            await raw.ConnectAsync("127.0.0.1", port);
            await raw.GetStream().WriteAsync("DBPB\u0010\u0000akka://dbp/user/x"u8.ToArray());
        }

        // 4. TLS without a client certificate (what `openssl s_client` does): the Akka port refuses the
        //    handshake, the bulk port allows only the join handshake, so a frame there closes the connection.
        foreach (int port in new[] { server.Address.Port!.Value, bulkPort })
        {
            Assert.True(await ClosedAfterTlsWithoutCertificate(port), $"port {port} kept a TLS connection without a client certificate open");
        }

        // The honest worker joins after all of that; the run it trains is the message that comes after.
        float[] trained = await Finish(server, StartWorker(server, "honest"));
        Fixtures.AssertSameBits(run.Oracle, trained, "run attacked by strangers");
        Assert.Equal(1, server.Desk.Refused); // the wrong secret; the impostor check happens on the worker's side
        Assert.Equal(1, server.Desk.Issued);
        var members = Akka.Cluster.Cluster.Get(server.System).State.Members.Select(m => m.Address).ToList();
        foreach (ActorSystem rogue in new[] { plain, foreign })
        {
            Address rogueAddress = ((ExtendedActorSystem)rogue).Provider.DefaultAddress;
            Assert.DoesNotContain(rogueAddress, members);
            Assert.NotEqual(Akka.Cluster.MemberStatus.Up, Akka.Cluster.Cluster.Get(rogue).SelfMember.Status);
        }
        await Task.WhenAll(plain.Terminate(), foreign.Terminate());
    }

    /// <summary>Connects with TLS and no certificate, sends a frame, and reports whether the server closed the connection (within 20 s).</summary>
    private static async Task<bool> ClosedAfterTlsWithoutCertificate(int port)
    {
        using var tcp = new TcpClient();
        await tcp.ConnectAsync("127.0.0.1", port);
        // A stranger accepts any server: what matters here is what the server accepts.
#pragma warning disable CA5359
        using var ssl = new System.Net.Security.SslStream(tcp.GetStream(), false, (_, _, _, _) => true);
#pragma warning restore CA5359
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        try
        {
            await ssl.AuthenticateAsClientAsync(new System.Net.Security.SslClientAuthenticationOptions { TargetHost = "dbp" }, timeout.Token);
            await ssl.WriteAsync("DBPB\u0010\u0000akka://dbp/user/x"u8.ToArray(), timeout.Token);
            await ssl.FlushAsync(timeout.Token);
            return await ssl.ReadAsync(new byte[64], timeout.Token) == 0;
        }
        catch (OperationCanceledException)
        {
            return false; // still open after 20 s
        }
        catch (Exception e) when (e is IOException or System.Security.Authentication.AuthenticationException)
        {
            return true; // refused during or right after the handshake
        }
    }

    /// <summary>
    /// A port that accepts and closes mid-handshake, where the server connects out: a worker dying as the server
    /// reconnects, or a dead worker's port now another process's. Akka.Remote shuts a node down on any failed
    /// outbound TLS handshake; the server's ActorSystem terminated and the run waited for ever (a CI hang).
    /// </summary>
    [Fact]
    public async Task AFailedOutboundTlsHandshake_DoesNotStopTheServer_AndTheRunKeepsItsBits()
    {
        Run run = Prepare(epochs: 40);
        await using ClusterServer server = StartServer(run);
        Task<WorkerExit> worker = StartWorker(server, "w1");
        using var closer = new TcpListener(System.Net.IPAddress.Loopback, 0);
        closer.Start();
        int port = ((System.Net.IPEndPoint)closer.LocalEndpoint).Port;
        using var stop = new CancellationTokenSource();
        Task closing = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                using TcpClient accepted = await closer.AcceptTcpClientAsync(stop.Token);
                accepted.Client.Close();
            }
        });
        while (server.Session.GlobalStep == 0 && !server.Completion.IsCompleted)
        {
            await Task.Delay(20);
        }
        Assert.True(server.System.HasExtension<TlsFailureHold>(), "the server node has no hold");
        TlsFailureHold hold = server.System.GetExtension<TlsFailureHold>();
        // The server starts a TLS handshake with the port, which closes it: Akka asks the node to shut down.
        server.System.ActorSelection($"akka.ssl.tcp://{ClusterNaming.SystemName}@127.0.0.1:{port}/user/anyone").Tell("hello");
        for (int i = 0; i < 600 && !hold.Held; i++)
        {
            await Task.Delay(50);
        }
        Assert.True(hold.Held, "the outbound handshake never failed (the test proves nothing)");
        Assert.Equal(run.Oracle, await Finish(server, worker));
        await stop.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => closing);
    }

    /// <summary>
    /// A server node that stops under its run (whatever stops it) ends the run as a crash would, restartable, and
    /// telling the workers is skipped at once: an Ask on the stopped system never timed out (its scheduler had stopped).
    /// </summary>
    [Fact]
    public async Task AServerNodeThatStopsUnderItsRun_EndsItRestartable_AndNothingWaitsOnIt()
    {
        // A run that cannot finish first: it waits for two workers, and none comes.
        Run run = Prepare(epochs: 5);
        await using ClusterServer server = ClusterServer.Start(TrainingSession.Prepare(run.Config, run.Data, null, 0.2), Loopback.Server(_dir),
            minimumWorkers: 2, NullObserver.Instance, null, new ServerData(run.DataPath, null, 0.2));
        await CoordinatedShutdown.Get(server.System).Run(CoordinatedShutdown.UnknownReason.Instance).WaitAsync(TimeSpan.FromSeconds(60));
        var failed = await Assert.ThrowsAsync<TrainingFailedException>(() => server.Completion.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.True(failed.Restartable, failed.Message);
        Assert.Contains("the server's Akka node stopped before training finished", failed.Message);
        await server.AnnounceFinishAsync(new TrainingFinished(0, false, "unused")).WaitAsync(TimeSpan.FromSeconds(5));
    }

    private static Akka.Actor.Setup.ActorSystemSetup ActorSystemSetupFor(Config config, DotNettySslSetup tls) =>
        Akka.Actor.Setup.ActorSystemSetup.Create(BootstrapSetup.Create().WithConfig(config), tls);

    [Fact]
    public async Task AMemberWithAValidCertificate_IsObeyedInNothingItIsNotEntitledTo()
    {
        Run run = Prepare(epochs: 150);
        await using ClusterServer server = StartServer(run);
        var (host, bulkPort) = BulkChannel.ParseEndpoint(server.Channel.Endpoint);
        string checkpoint = Path.Combine(_dir, "written-by-mallory.safetensors");

        // Mallory holds the token: she enrolls, becomes a cluster member, and runs a bulk channel.
        var settings = new NodeSettings { BindHost = "127.0.0.1", Port = 0 };
        int port = settings.ChoosePort("127.0.0.1");
        Address self = settings.NodeAddress(port);
        EnrollmentResult enrolled = await Enrollment.EnrollAsync(host, bulkPort, server.Authority!.Token, "mallory", self.ToString(), CancellationToken.None);
        Config config = (settings with { Port = port }).BuildConfig(ClusterNaming.WorkerRole);
        using ActorSystem mallory = ActorSystem.Create(ClusterNaming.SystemName, NodeSettings.BuildSetup(config, enrolled.Identity));
        BulkChannel channel = Courier.Get(mallory).StartChannel("127.0.0.1", 0, "127.0.0.1", enrolled.Identity, InboundPolicy.WorkerNode());
        await Akka.Cluster.Cluster.Get(mallory).JoinSeedNodesAsync([server.Address]).WaitAsync(TimeSpan.FromSeconds(30));

        // The honest worker's address is fixed in advance, so Mallory can speak in its name from the start.
        NodeSettings honestSettings = Loopback.Worker(server);
        honestSettings = honestSettings with { Port = honestSettings.ChoosePort("127.0.0.1") };
        Address honestAddress = honestSettings.NodeAddress(honestSettings.Port!.Value);
        var provider = ((ExtendedActorSystem)mallory).Provider;
        IActorRef parameterServer = provider.ResolveActorRef($"{server.Address}{ClusterNaming.ParameterServerPath}");
        IActorRef gatekeeper = provider.ResolveActorRef($"{server.Address}/user/{ClusterNaming.GatekeeperName}");
        IActorRef spoofedWorker = provider.ResolveActorRef($"{honestAddress}{ClusterNaming.WorkerActorPath}");
        IActorRef me = mallory.ActorOf(Props.Create(() => new Sink()), ClusterNaming.WorkerAgentName);
        var poison = new GradientsComputed(0, new TreeNode(0, 8), new BatchResult(1e9, 0, 1), Enumerable.Repeat(1e6f, server.Session.Parameters.Length).ToArray(), 0);

        // Well-formed requests she is not entitled to, first on a fresh connection (so they reach the actors):
        // a registration from a node the gatekeeper never admitted, and a request for the training data.
        channel.Send(server.Channel.Endpoint, parameterServer, new RegisterWorker("mallory", Serialization.WireFormat.ProtocolVersion, server.Session.DataHash, server.Session.Architecture.Describe(), NumericFingerprint.Value), me);
        channel.Send(server.Channel.Endpoint, gatekeeper, RequestTrainingData.Instance, me);
        long refusalsBefore = server.Channel.Refusals;
        Task<WorkerExit>? honest = null;
        int rounds = 0;
        // Attack before the honest worker joins (the server holds the run, waiting for it), then while it trains.
        while (rounds < 20 || !server.Completion.IsCompleted && rounds < 300)
        {
            if (++rounds == 20)
            {
                honest = ClusterWorker.RunAsync(honestSettings, new WorkerNodeOptions("honest", null, false));
            }
            // Over Akka.Remote: obeyed by nobody (untrusted mode drops PoisonPill and selections; the
            // serializer refuses protocol messages on that road).
            ActorSelection selection = mallory.ActorSelection($"{server.Address}{ClusterNaming.ParameterServerPath}");
            selection.Tell(PoisonPill.Instance);
            selection.Tell(new TrainEpoch(0));
            selection.Tell(new SaveCheckpoint(checkpoint));
            parameterServer.Tell(new SaveCheckpoint(checkpoint), me);
            parameterServer.Tell(poison with { Step = server.Session.GlobalStep }, me);
            // Over the bulk channel: messages only the coordinator may send, and gradients in the honest
            // worker's name (each closes the connection; the next frame reconnects).
            channel.Send(server.Channel.Endpoint, parameterServer, new SaveCheckpoint(checkpoint), me);
            channel.Send(server.Channel.Endpoint, parameterServer, new TrainEpoch(0), me);
            channel.Send(server.Channel.Endpoint, parameterServer, poison with { Step = server.Session.GlobalStep }, spoofedWorker);
            await Task.Delay(20);
        }
        output.WriteLine($"{rounds} rounds of attacks while training; the server's bulk channel refused {server.Channel.Refusals - refusalsBefore} connections");

        float[] trained = await Finish(server, honest!);
        Fixtures.AssertSameBits(run.Oracle, trained, "run attacked by a member");
        Assert.False(File.Exists(checkpoint), "the server wrote a checkpoint where a worker said");
        Assert.True(server.Channel.Refusals - refusalsBefore >= 3, $"refusals: {server.Channel.Refusals - refusalsBefore}");
        ServerStatistics stats = await server.System.ActorSelection(ClusterNaming.ParameterServerPath).Ask<ServerStatistics>(GetStatistics.Instance, TimeSpan.FromSeconds(10));
        output.WriteLine($"parameter server: {stats}");
        Assert.True(stats.Unauthorized >= 1, "the registration of a node the gatekeeper never admitted must be refused and counted");
        Assert.Equal(0, channel.BytesReceived); // no data, no work, nothing was ever sent to mallory
        await mallory.Terminate();
    }

    /// <summary>
    /// Thousands of idle sockets and random bytes against a secure server, then every malformed frame a
    /// parser can meet against an insecure one (where frames are read without TLS in front): oversized
    /// length prefixes, unknown manifests, truncated payloads, oversized paths, frames for other nodes.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task BulkChannelFuzz_LeavesTheRunItsBitsAndBoundedMemory(bool insecure)
    {
        Run run = Prepare(epochs: 60);
        await using ClusterServer server = StartServer(run, insecure);
        var (_, bulkPort) = BulkChannel.ParseEndpoint(server.Channel.Endpoint);
        long peakBefore = PeakRssBytes();
        var idle = new List<TcpClient>();
        try
        {
            for (int i = 0; i < 2000; i++)
            {
                var client = new TcpClient();
                await client.ConnectAsync("127.0.0.1", bulkPort);
                idle.Add(client);
                if (i % 10 == 0)
                {
                    await client.GetStream().WriteAsync(RandomBytes(i, 64));
                }
            }
            Task<WorkerExit> honest = StartWorker(server, "honest", insecure);
            string here = server.Address.ToString();
            var frames = new List<byte[]>
            {
                Frame($"{here}{ClusterNaming.ParameterServerPath}", "GC", 2L << 30, []),                    // claims 2 GiB
                Frame($"{here}{ClusterNaming.ParameterServerPath}", "GC", -5, []),                          // negative length
                Frame($"{here}{ClusterNaming.ParameterServerPath}", "XX", 16, new byte[16]),                // unknown manifest
                Frame($"{here}{ClusterNaming.ParameterServerPath}", "SC", 16, new byte[16]),                // coordinator-only
                Frame($"{here}/user/coordinator", "GC", 16, new byte[16]),                                  // wrong recipient
                Frame($"akka.tcp://dbp@10.1.2.3:1{ClusterNaming.ParameterServerPath}", "GC", 16, new byte[16]), // another node
                Frame($"{here}{ClusterNaming.ParameterServerPath}", "RW", 100, new byte[10]),               // truncated
                Frame($"{here}{ClusterNaming.ParameterServerPath}", "RW", 8, [255, 255, 255, 127, 0, 0, 0, 0]), // string count past the payload
                "DBPB"u8.ToArray().Concat(new byte[] { 0xFF, 0xFF }).Concat(RandomBytes(7, 200)).ToArray(),                                          // 64 KiB path length
                RandomBytes(3, 4096),
            };
            for (int round = 0; round < 20; round++)
            {
                foreach (byte[] frame in frames)
                {
                    using var client = new TcpClient();
                    await client.ConnectAsync("127.0.0.1", bulkPort);
                    try
                    {
                        await client.GetStream().WriteAsync(frame);
                    }
                    catch (IOException)
                    {
                        // closed by the server mid-write: that is the expected answer
                    }
                }
            }
            float[] trained = await Finish(server, honest);
            Fixtures.AssertSameBits(run.Oracle, trained, $"fuzzed {(insecure ? "insecure" : "secure")} run");
        }
        finally
        {
            idle.ForEach(c => c.Dispose());
        }
        long peakAfter = PeakRssBytes();
        output.WriteLine($"{(insecure ? "insecure" : "mutual TLS")}: bulk channel refused {server.Channel.Refusals} connections; peak RSS of the test process {peakBefore / 1e6:F0} MB before, {peakAfter / 1e6:F0} MB after");
        Assert.True(server.Channel.Refusals >= 200, $"refusals: {server.Channel.Refusals}");
        Assert.True(peakAfter - peakBefore < 512L << 20, $"peak RSS grew by {(peakAfter - peakBefore) / 1e6:F0} MB");
        Assert.True(await Eventually(() => server.Channel.OpenConnections <= 1 ? "closed" : null, TimeSpan.FromSeconds(20)) is not null);
    }

    private static byte[] Frame(string recipient, string manifest, long length, byte[] payload)
    {
        var bytes = new List<byte>("DBPB"u8.ToArray());
        foreach (string path in new[] { recipient, "akka.tcp://dbp@127.0.0.1:1/user/fuzzer" })
        {
            byte[] text = Encoding.UTF8.GetBytes(path);
            bytes.AddRange(BitConverter.GetBytes((ushort)text.Length));
            bytes.AddRange(text);
        }
        bytes.AddRange(Encoding.ASCII.GetBytes(manifest));
        bytes.AddRange(BitConverter.GetBytes(length));
        bytes.AddRange(payload);
        return [.. bytes];
    }

    private static byte[] RandomBytes(int seed, int count)
    {
        var bytes = new byte[count];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    /// <summary>VmHWM: the peak resident set of this process.</summary>
    private static long PeakRssBytes()
    {
        string line = File.ReadLines("/proc/self/status").First(l => l.StartsWith("VmHWM:", StringComparison.Ordinal));
        return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;
    }

    private static async Task<T> Eventually<T>(Func<T?> probe, TimeSpan? within = null)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (true)
        {
            if (probe() is { } value)
            {
                return value;
            }
            if (clock.Elapsed > (within ?? TimeSpan.FromSeconds(30)))
            {
                throw new TimeoutException("the condition did not hold in time");
            }
            await Task.Delay(50);
        }
    }

    private sealed class Sink : ReceiveActor
    {
        public Sink() => ReceiveAny(_ => { });
    }
}
