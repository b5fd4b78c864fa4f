using System.Diagnostics;
using System.Net.Sockets;
using Akka.Actor;
using DistributedBackprop.Actors.Security;
using DistributedBackprop.Actors.Transport;
using DistributedBackprop.Engine;

namespace DistributedBackprop.Actors.Cluster;

/// <summary>
/// The server node of cluster mode (`dbp serve`): an ActorSystem with role parameter-server that is its own
/// seed, holding the coordinator, the parameter server and the gatekeeper. Unless insecure, it loads (or
/// creates) the cluster CA and join token from its state directory, issues itself a certificate for its
/// Akka address, and enrolls workers at its bulk channel port. Training starts once
/// <c>minimumWorkers</c> workers have registered.
/// </summary>
public sealed class ClusterServer : IAsyncDisposable
{
    private readonly TaskCompletionSource<TrainingOutcome> _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly IActorRef _gatekeeper;

    private ClusterServer(TrainingSession session, NodeSettings settings, int minimumWorkers, ITrainingObserver observer, CheckpointPolicy? checkpoints, ServerData data, int serverShards)
    {
        var clock = Stopwatch.StartNew();
        Session = session;
        Authority = settings.Tls
            ? ClusterAuthority.LoadOrCreate(settings.StateDirectory ?? ClusterAuthority.DefaultStateDirectory(), settings.NewToken, settings.TokenFile)
            : null;
        Address address;
        NodeIdentity? identity;
        Akka.Configuration.Config config;
        string bindHost = settings.BindHost ?? settings.BuildConfig(ClusterNaming.ServerRole).GetString("akka.remote.dot-netty.tcp.hostname");
        if (settings.BulkPort is int pinnedBulk and > 0)
        {
            // Before the node starts: refused later, the started node must leave its own cluster, which under load
            // took over 5 s and logged a warning (seen in the CLI test of this error).
            try
            {
                PortUnavailableException.Try(bindHost, pinnedBulk, "--bulk-port");
            }
            catch (PortUnavailableException e) when (e.InUse)
            {
                throw WithBulkPortDefault(e);
            }
        }
        for (int choice = 1; ; choice++)
        {
            int port = settings.ChoosePort(bindHost);
            address = settings.NodeAddress(port);
            identity = Authority?.IssueOwn(ClusterNaming.ServerRole, ClusterNaming.ServerRole, address.ToString());
            config = (settings with { Port = port }).BuildConfig(ClusterNaming.ServerRole);
            try
            {
                System = PortUnavailableException.CreateSystem(NodeSettings.BuildSetup(config, identity), bindHost, port, "--port");
                break;
            }
            catch (PortUnavailableException e) when (e.InUse && settings.Port is not > 0)
            {
                // --port 0: a port chosen free was taken before the bind (the certificate names it first); choose again.
                if (choice == PortUnavailableException.ChoicesBeforeGivingUp)
                {
                    throw PortUnavailableException.NoneFree(bindHost, e);
                }
            }
        }
        TlsFailureHold.Install(System);
        var cluster = Akka.Cluster.Cluster.Get(System);
        Address = cluster.SelfAddress;
        if (!Address.Equals(address))
        {
            TlsFailureHold.Terminate(System).Wait();
            throw new InvalidOperationException($"the node started at {Address}, not at {address} as its certificate says");
        }
        cluster.Join(Address);
        var policy = InboundPolicy.ServerNode();
        policy.SetRun(session.Parameters.Length, session.Train.Features, session.Config.LocalSteps?.Replicas ?? 0);
        BulkChannel? channel = null;
        Desk = new EnrollmentDesk(Authority, Address.ToString(), () => channel!.Endpoint,
            claimed => cluster.State.Members.Any(m => Enrollment.SameAddress(m.Address.ToString(), claimed)), Akka.Event.Logging.GetLogger(System, "enrollment"));
        try
        {
            channel = Courier.Get(System).StartChannel(bindHost, settings.BulkPort ?? 0, settings.AdvertisedHost(), identity, policy, Desk);
        }
        catch (PortUnavailableException e)
        {
            // Taken in the instant since its trial above (or chosen free by the system: never refused so).
            TlsFailureHold.Terminate(System).Wait();
            if (e.InUse)
            {
                throw WithBulkPortDefault(e);
            }
            throw;
        }
        Channel = channel;
        long frameSize = config.GetByteSize("akka.remote.dot-netty.tcp.maximum-frame-size") ?? 128000;
        var relay = new FormationObserver(observer, clock);
        Formation = relay;
        System.ActorOf(TrainingCoordinator.Props(session, 0, relay, checkpoints, _completion, minimumWorkers, serverShards), "coordinator");
        _gatekeeper = System.ActorOf(Gatekeeper.Props(session, data, frameSize), ClusterNaming.GatekeeperName);
    }

    /// <summary>A bulk port in use, with where its number came from when the user gave only --port.</summary>
    private static PortUnavailableException WithBulkPortDefault(PortUnavailableException e) =>
        new($"{e.Message} (the server's bulk channel takes --port + 1 unless --bulk-port says otherwise)", e.Port, e.InUse, e);

    /// <summary>The run the parameter server trains (read it once <see cref="Completion"/> has completed).</summary>
    public TrainingSession Session { get; }

    /// <summary>The cluster CA and join token; null with --insecure.</summary>
    public ClusterAuthority? Authority { get; }

    /// <summary>The join handshake's counters (certificates issued, nodes refused).</summary>
    public EnrollmentDesk Desk { get; }

    public ActorSystem System { get; }

    /// <summary>The seed address workers join (akka.tcp://dbp@host:port).</summary>
    public Address Address { get; }

    public BulkChannel Channel { get; }

    /// <summary>When the first training step was applied, measured from the start of this node.</summary>
    public FormationObserver Formation { get; }

    public Task<TrainingOutcome> Completion => _completion.Task;

    /// <param name="serverShards">parameter shards (<c>--server-shards</c>), placed on the worker nodes when training starts; 1 keeps θ on this node.</param>
    public static ClusterServer Start(TrainingSession session, NodeSettings settings, int minimumWorkers, ITrainingObserver observer, CheckpointPolicy? checkpoints, ServerData data, int serverShards = 1) =>
        new(session, settings, minimumWorkers, observer, checkpoints, data, serverShards);

    /// <summary>Tells every worker node training is over, so their processes exit.</summary>
    public async Task AnnounceFinishAsync(TrainingFinished message)
    {
        if (System.WhenTerminated.IsCompleted)
        {
            // Nobody to announce it (and an Ask's timeout needs the stopped system's scheduler: it would wait for ever).
            return;
        }
        await _gatekeeper.Ask<Status.Success>(new AnnounceFinish(message), TimeSpan.FromSeconds(10)).WaitAsync(TimeSpan.FromSeconds(15)).ConfigureAwait(false);
        // Give Akka.Remote a moment to deliver before the system goes down.
        await Task.Delay(TimeSpan.FromMilliseconds(500)).ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        // Let the workers leave first (they do on TrainingFinished, which the gatekeeper repeats until they
        // have), so nobody logs a lost association and none mistakes the server leaving for a crash.
        var cluster = Akka.Cluster.Cluster.Get(System);
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < TimeSpan.FromSeconds(10) && cluster.State.Members.Any(m => m.HasRole(ClusterNaming.WorkerRole) && m.Status is Akka.Cluster.MemberStatus.Up or Akka.Cluster.MemberStatus.WeaklyUp or Akka.Cluster.MemberStatus.Joining or Akka.Cluster.MemberStatus.Leaving))
        {
            await Task.Delay(100).ConfigureAwait(false);
        }
        await Leave(System).ConfigureAwait(false);
        await TlsFailureHold.Terminate(System).ConfigureAwait(false);
    }

    /// <summary>Leaves the cluster gracefully, giving up after a few seconds.</summary>
    internal static async Task Leave(ActorSystem system)
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(3));
        try
        {
            await Akka.Cluster.Cluster.Get(system).LeaveAsync(timeout.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // The cluster is gone already; terminating is all that is left.
        }
    }

    /// <summary>Passes progress on and notes when training really started (cluster formation time).</summary>
    public sealed class FormationObserver(ITrainingObserver inner, Stopwatch clock) : ITrainingObserver
    {
        public TimeSpan? FirstStepAt { get; private set; }

        public void StepCompleted(StepReport report)
        {
            FirstStepAt ??= clock.Elapsed;
            inner.StepCompleted(report);
        }

        public void EpochCompleted(EpochReport report) => inner.EpochCompleted(report);

        public void WorkerJoined(string name, int workers) => inner.WorkerJoined(name, workers);

        public void WorkerLeft(string name, int workers, bool graceful) => inner.WorkerLeft(name, workers, graceful);

        public void Persist() => inner.Persist();
    }
}

/// <summary>
/// A worker node of cluster mode (`dbp worker`): enrolls at the server's door (its bulk channel port) with
/// the join token, receiving a certificate for the Akka address it will use, then starts its ActorSystem
/// with it, joins the server, and runs until the server says training is over.
/// </summary>
public static class ClusterWorker
{
    /// <summary>How long a worker keeps knocking while the server's port does not answer (it may still be starting; --join-timeout).</summary>
    public static readonly TimeSpan DefaultJoinTimeout = TimeSpan.FromMinutes(5);

    public static async Task<WorkerExit> RunAsync(NodeSettings settings, WorkerNodeOptions options, CancellationToken cancellation = default)
    {
        if (settings.SeedNodes is not { Count: > 0 } seeds)
        {
            throw new ArgumentException("--join: the server's HOST:PORT is required (or DBP_SEED_NODES)");
        }
        JoinToken? token = null;
        if (settings.Tls)
        {
            token = settings.Token is { } text ? ParseToken(text, "--token")
                : settings.TokenFile is { } file ? JoinToken.ReadFile(file)
                : throw new ArgumentException("--token: a join token is required (--token, --token-file or DBP_JOIN_TOKEN; `dbp serve` prints it), or --insecure on a trusted network");
        }
        TimeSpan rejoinFor = settings.RejoinTimeout ?? DefaultRejoinTimeout;
        TimeSpan joinFor = settings.JoinTimeout ?? DefaultJoinTimeout;
        Stopwatch? lost = null;
        int portsTaken = 0;
        string bindHost = settings.BindHost ?? settings.BuildConfig(ClusterNaming.WorkerRole).GetString("akka.remote.dot-netty.tcp.hostname");
        while (true)
        {
            // Each incarnation gets its own address (a free port unless one is pinned) and certificate.
            int port = settings.ChoosePort(bindHost);
            Address self = settings.NodeAddress(port);
            TimeSpan patience = lost is null ? joinFor : rejoinFor - lost.Elapsed;
            (EnrollmentResult enrolled, ServerContact contact)? joined;
            try
            {
                joined = await EnrollAsync(settings, seeds, token, options.Name, self, patience, lost is null ? options.Announce : null, cancellation).ConfigureAwait(false);
            }
            catch (EnrollmentRefusedException e)
            {
                return new WorkerExit(2, e.Message);
            }
            catch (OperationCanceledException) when (cancellation.IsCancellationRequested)
            {
                return new WorkerExit(0, "stopped by a signal before joining");
            }
            if (joined is not var (enrolled, contact))
            {
                return new WorkerExit(1, lost is null
                    ? $"no server answered at {string.Join(", ", seeds)} within {joinFor.TotalSeconds:0} s (--join-timeout); is `dbp serve` running, and is its bulk port (the --join port + 1 unless --server-bulk-port) reachable from here?"
                    : $"the server did not come back within {rejoinFor.TotalSeconds:0} s");
            }
            Stopwatch? lostBeforeThisStart = lost;
            lost = null;
            // Stopping the old node is only cut short for a rejoin that will happen, on ports of its own.
            bool mayCutStopShort = rejoinFor > TimeSpan.Zero && !(settings.Port is > 0 || settings.BulkPort is > 0);
            WorkerExit exit;
            try
            {
                exit = await RunIncarnationAsync(settings with { Port = port }, options, enrolled, contact, mayCutStopShort, cancellation).ConfigureAwait(false);
            }
            catch (PortUnavailableException e) when (e.InUse && e.Port == port && settings.Port is not > 0)
            {
                // The port was free when chosen, but it is released between the choice and Akka's bind (the
                // certificate names the address before the node starts): another process took it meanwhile.
                if (++portsTaken == PortUnavailableException.ChoicesBeforeGivingUp)
                {
                    throw PortUnavailableException.NoneFree(bindHost, e);
                }
                options.Announce?.Invoke($"the port this node chose, {port}, was taken by another process before it bound it; choosing another");
                lost = lostBeforeThisStart; // a rejoin keeps the time it has left
                continue;
            }
            portsTaken = 0;
            if (!exit.ServerLost || rejoinFor <= TimeSpan.Zero || cancellation.IsCancellationRequested)
            {
                return exit;
            }
            options.Announce?.Invoke($"{exit.Message}; rejoining when it answers again (for up to {rejoinFor.TotalSeconds:0} s)");
            lost = Stopwatch.StartNew();
        }
    }

    /// <summary>How long a worker that lost its server keeps knocking (a supervisor restarts servers in seconds; minutes leave room).</summary>
    public static readonly TimeSpan DefaultRejoinTimeout = TimeSpan.FromMinutes(5);

    /// <summary>One life of the node: an ActorSystem with this enrollment's certificate, until the agent says how it ended.</summary>
    private static async Task<WorkerExit> RunIncarnationAsync(NodeSettings settings, WorkerNodeOptions options, EnrollmentResult enrolled, ServerContact contact, bool mayCutStopShort, CancellationToken cancellation)
    {
        Akka.Configuration.Config config = settings.BuildConfig(ClusterNaming.WorkerRole);
        ActorSystem system = PortUnavailableException.CreateSystem(NodeSettings.BuildSetup(config, enrolled.Identity), config.GetString("akka.remote.dot-netty.tcp.hostname"), settings.Port!.Value, "--port");
        TlsFailureHold.Install(system);
        WorkerExit? result = null;
        try
        {
            Courier.Get(system).StartChannel(settings.BindHost ?? config.GetString("akka.remote.dot-netty.tcp.hostname"), settings.BulkPort ?? 0, settings.AdvertisedHost(), enrolled.Identity, InboundPolicy.WorkerNode(), paced: true);
            var exit = new TaskCompletionSource<WorkerExit>(TaskCreationOptions.RunContinuationsAsynchronously);
            system.ActorOf(WorkerAgent.Props(options, contact, exit), ClusterNaming.WorkerAgentName);
            // Not JoinSeedNodesAsync: it completes when this node is Up in its own view, and a node that joined
            // beside an unreachable member stays WeaklyUp (it works all the same: the agent follows the server's
            // membership). Awaiting it, an incarnation downed before that never reached the wait on its exit
            // below and never rejoined (seen in the chaos suite: a cut-off node that thought itself WeaklyUp).
            Akka.Cluster.Cluster.Get(system).JoinSeedNodes([contact.Address]);
            try
            {
                result = await exit.Task.WaitAsync(cancellation).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (cancellation.IsCancellationRequested)
            {
                // SIGTERM (docker stop, systemd) or Ctrl-C: leave gracefully, so the server logs a leave and deals
                // this node's chunks to the others at once, instead of waiting to down an unreachable node.
                // The exit is settled first: as the leaving node's cluster stops, the agent sees the server
                // "removed", which is not a lost server here.
                result = new WorkerExit(0, "stopped by a signal; left the cluster");
                exit.TrySetResult(result);
                await ClusterServer.Leave(system).ConfigureAwait(false);
                return result;
            }
            if (!result.ServerLost)
            {
                // A graceful leave needs the server; after losing it there is nobody to leave.
                await ClusterServer.Leave(system).ConfigureAwait(false);
            }
            return result;
        }
        finally
        {
            await StopAsync(system, waitForAll: result is not { ServerLost: true } || !mayCutStopShort || cancellation.IsCancellationRequested, options.Announce).ConfigureAwait(false);
        }
    }

    /// <summary>How long a worker that lost its server waits for the old node to stop before it knocks again as a new one.</summary>
    public static readonly TimeSpan StopPatience = TimeSpan.FromSeconds(5);

    /// <summary>
    /// Stops an incarnation's ActorSystem. A node downed while it was cut off can take long to stop (Akka's
    /// coordinated-shutdown phases may each wait out their timeout, 5–10 s, on peers it cannot reach), so a
    /// node about to rejoin waits at most
    /// <see cref="StopPatience"/> and lets the old system finish in the background: the next incarnation binds
    /// fresh ports. <paramref name="waitForAll"/>: no rejoin follows, or a pinned port must be released first.
    /// </summary>
    internal static async Task StopAsync(ActorSystem system, bool waitForAll, Action<string>? announce)
    {
        Task terminated = TlsFailureHold.Terminate(system);
        if (waitForAll)
        {
            await terminated.ConfigureAwait(false);
            return;
        }
        if (await Task.WhenAny(terminated, Task.Delay(StopPatience)).ConfigureAwait(false) != terminated)
        {
            announce?.Invoke($"the previous node is still stopping after {StopPatience.TotalSeconds:0} s; knocking again as a new one meanwhile");
        }
    }

    private static JoinToken ParseToken(string text, string where)
    {
        try
        {
            return JoinToken.Parse(text);
        }
        catch (FormatException e)
        {
            throw new ArgumentException($"{where}: {e.Message}", e);
        }
    }

    /// <summary>
    /// The join handshake with the first seed that answers, retried while no server listens (it may be
    /// starting, or restarting); null if none answered within <paramref name="patience"/>. A refusal is final.
    /// </summary>
    /// <summary>
    /// Knocks at the seeds' join handshake until one answers or <paramref name="patience"/> runs out (null). The
    /// first failure is announced once, in one line, with how long it will keep trying; then it knocks quietly.
    /// </summary>
    private static async Task<(EnrollmentResult, ServerContact)?> EnrollAsync(NodeSettings settings, IReadOnlyList<string> seeds, JoinToken? token, string name, Address self, TimeSpan patience, Action<string>? announce, CancellationToken cancellation)
    {
        var clock = Stopwatch.StartNew();
        int closedHandshakes = 0;
        bool announced = false;
        while (true)
        {
            foreach (string seed in seeds)
            {
                Address seedAddress = settings.SeedAddress(seed);
                string host = seedAddress.Host!;
                int bulkPort = settings.ServerBulkPort ?? seedAddress.Port!.Value + 1;
                try
                {
                    EnrollmentResult result = await Enrollment.EnrollAsync(host, bulkPort, token, name, self.ToString(), cancellation).ConfigureAwait(false);
                    Address server;
                    try
                    {
                        server = Address.Parse(result.ServerAkkaAddress);
                    }
                    catch (Exception e) when (e is UriFormatException or ArgumentException or FormatException)
                    {
                        throw new EnrollmentRefusedException($"the server at {host}:{bulkPort} gave an invalid Akka address");
                    }
                    return (result, new ServerContact(server, $"{(host.Contains(':') ? $"[{host}]" : host)}:{bulkPort}"));
                }
                catch (Exception e) when (e is SocketException or OperationCanceledException && !cancellation.IsCancellationRequested)
                {
                    // Nobody listening yet, or no answer in time: knock again.
                    if (!announced)
                    {
                        announced = true;
                        announce?.Invoke($"cannot reach the server's join handshake at {host}:{bulkPort} ({(e is SocketException s ? s.SocketErrorCode.ToString() : "no answer")}); trying again every 0.5 s for up to {patience.TotalSeconds:0} s (--join-timeout)");
                    }
                }
                catch (Exception e) when (e is IOException or InvalidDataException)
                {
                    // Connected, then closed mid-handshake: a server of the other kind (TLS or --insecure) does that.
                    if (++closedHandshakes >= 3)
                    {
                        throw new EnrollmentRefusedException($"the server at {host}:{bulkPort} closed the join handshake {closedHandshakes} times ({e.Message}); {(token is null ? "does it require a join token (started without --insecure)?" : "is it running with --insecure?")}");
                    }
                }
            }
            if (clock.Elapsed > patience)
            {
                return null;
            }
            await Task.Delay(TimeSpan.FromMilliseconds(500), cancellation).ConfigureAwait(false);
        }
    }
}
