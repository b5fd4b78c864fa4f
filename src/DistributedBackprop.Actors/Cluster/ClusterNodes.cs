using System.Diagnostics;
using Akka.Actor;
using DistributedBackprop.Actors.Transport;
using DistributedBackprop.Engine;

namespace DistributedBackprop.Actors.Cluster;

/// <summary>
/// The server node of cluster mode (`dbp serve`): an ActorSystem with role parameter-server that is its own
/// seed, holding the coordinator, the parameter server and the gatekeeper. Training starts once
/// <c>minimumWorkers</c> workers have registered.
/// </summary>
public sealed class ClusterServer : IAsyncDisposable
{
    private readonly TaskCompletionSource<TrainingOutcome> _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly IActorRef _gatekeeper;

    private ClusterServer(TrainingSession session, NodeSettings settings, int minimumWorkers, ITrainingObserver observer, CheckpointPolicy? checkpoints, ServerData data)
    {
        var clock = Stopwatch.StartNew();
        Akka.Configuration.Config config = settings.BuildConfig(ClusterNaming.ServerRole);
        System = ActorSystem.Create(ClusterNaming.SystemName, settings.BuildSetup(config));
        var cluster = Akka.Cluster.Cluster.Get(System);
        Address = cluster.SelfAddress;
        cluster.Join(Address);
        Channel = Courier.Get(System).StartChannel(settings.BindHost ?? config.GetString("akka.remote.dot-netty.tcp.hostname"), settings.BulkPort ?? 0, settings.AdvertisedHost(), settings.LoadCertificate());
        long frameSize = config.GetByteSize("akka.remote.dot-netty.tcp.maximum-frame-size") ?? 128000;
        var relay = new FormationObserver(observer, clock);
        Formation = relay;
        System.ActorOf(TrainingCoordinator.Props(session, 0, relay, checkpoints, _completion, minimumWorkers), "coordinator");
        _gatekeeper = System.ActorOf(Gatekeeper.Props(session, data, Channel.Endpoint, frameSize), ClusterNaming.GatekeeperName);
    }

    public ActorSystem System { get; }

    /// <summary>The seed address workers join (akka.tcp://dbp@host:port).</summary>
    public Address Address { get; }

    public BulkChannel Channel { get; }

    /// <summary>When the first training step was applied, measured from the start of this node.</summary>
    public FormationObserver Formation { get; }

    public Task<TrainingOutcome> Completion => _completion.Task;

    public static ClusterServer Start(TrainingSession session, NodeSettings settings, int minimumWorkers, ITrainingObserver observer, CheckpointPolicy? checkpoints, ServerData data) =>
        new(session, settings, minimumWorkers, observer, checkpoints, data);

    /// <summary>Tells every worker node training is over, so their processes exit.</summary>
    public async Task AnnounceFinishAsync(TrainingFinished message)
    {
        await _gatekeeper.Ask<Status.Success>(new AnnounceFinish(message), TimeSpan.FromSeconds(10)).ConfigureAwait(false);
        // Give Akka.Remote a moment to deliver before the system goes down.
        await Task.Delay(TimeSpan.FromMilliseconds(500)).ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        // Let the workers leave first (they do on TrainingFinished), so nobody logs a lost association.
        var cluster = Akka.Cluster.Cluster.Get(System);
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < TimeSpan.FromSeconds(5) && cluster.State.Members.Any(m => m.HasRole(ClusterNaming.WorkerRole)))
        {
            await Task.Delay(100).ConfigureAwait(false);
        }
        await Leave(System).ConfigureAwait(false);
        await System.Terminate().ConfigureAwait(false);
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
    }
}

/// <summary>A worker node of cluster mode (`dbp worker`): joins the seed nodes, and runs until the server says training is over.</summary>
public static class ClusterWorker
{
    public static async Task<WorkerExit> RunAsync(NodeSettings settings, WorkerNodeOptions options, CancellationToken cancellation = default)
    {
        if (settings.SeedNodes is not { Count: > 0 } seeds)
        {
            throw new ArgumentException("--join: the server's HOST:PORT is required (or DBP_SEED_NODES)");
        }
        Akka.Configuration.Config config = settings.BuildConfig(ClusterNaming.WorkerRole);
        List<Address> seedAddresses = seeds.Select(settings.SeedAddress).ToList();
        ActorSystem system = ActorSystem.Create(ClusterNaming.SystemName, settings.BuildSetup(config));
        try
        {
            Courier.Get(system).StartChannel(settings.BindHost ?? config.GetString("akka.remote.dot-netty.tcp.hostname"), settings.BulkPort ?? 0, settings.AdvertisedHost(), settings.LoadCertificate());
            var exit = new TaskCompletionSource<WorkerExit>(TaskCreationOptions.RunContinuationsAsynchronously);
            system.ActorOf(WorkerAgent.Props(options, exit), ClusterNaming.WorkerAgentName);
            await Akka.Cluster.Cluster.Get(system).JoinSeedNodesAsync(seedAddresses, cancellation).ConfigureAwait(false);
            return await exit.Task.WaitAsync(cancellation).ConfigureAwait(false);
        }
        finally
        {
            await ClusterServer.Leave(system).ConfigureAwait(false);
            await system.Terminate().ConfigureAwait(false);
        }
    }
}
