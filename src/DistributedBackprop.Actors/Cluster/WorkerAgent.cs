using Akka.Actor;
using Akka.Event;
using DistributedBackprop.Actors.Serialization;
using DistributedBackprop.Actors.Transport;
using DistributedBackprop.Data;
using DistributedBackprop.Engine;
using ClusterEvents = Akka.Cluster.ClusterEvent;

namespace DistributedBackprop.Actors.Cluster;

/// <summary>
/// How a worker node ended: <see cref="ExitCode"/> 0 when training finished. <see cref="ServerLost"/>: the
/// server disappeared (or this node was cut off and downed) before training finished — the node may rejoin.
/// </summary>
public sealed record WorkerExit(int ExitCode, string Message, bool ServerLost = false);

/// <summary>What a worker node was told on its command line; <see cref="Announce"/> receives one-line progress news (the first step computed).</summary>
public sealed record WorkerNodeOptions(string Name, string? DataOverride, bool StreamData, Action<string>? Announce = null)
{
    /// <summary>How long a join may take before the worker says which stage it is at (it keeps trying; on two idle cores a join takes ~1 s).</summary>
    internal TimeSpan AdmissionPatience { get; init; } = TimeSpan.FromSeconds(30);
}

/// <summary>Where the server is, as the join handshake said (its Akka address and bulk channel endpoint).</summary>
public sealed record ServerContact(Address Address, string BulkEndpoint);

/// <summary>
/// A worker node's agent. Once the node is a cluster member and the parameter-server node the join
/// handshake named is up, it sends the server's gatekeeper a <see cref="JoinRequest"/> over the bulk
/// channel (repeated until answered), loads the training data
/// the <see cref="JoinAccepted"/> describes (its own path with --data, or streamed from the server) off the
/// actor, rebuilds exactly the server's training rows (same split, the server's preprocessing), and starts
/// the node's <see cref="Worker"/>, which registers with the parameter server. It completes the process's
/// exit when the server says <see cref="TrainingFinished"/>, refuses the worker, or disappears. Messages
/// that only the server may send are dropped from anyone else.
/// </summary>
public sealed class WorkerAgent : ReceiveActor, IWithTimers
{
    private readonly WorkerNodeOptions _options;
    private readonly ServerContact _contact;
    private readonly TaskCompletionSource<WorkerExit> _exit;
    private readonly Akka.Cluster.Cluster _cluster = Akka.Cluster.Cluster.Get(Context.System);
    private readonly Courier _courier = Courier.Get(Context.System);
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private Address? _server;
    private JoinAccepted? _accepted;
    private StreamedRows? _streamed;
    private WorkerSetup? _setup;
    private int _shardsHosted;

    public WorkerAgent(WorkerNodeOptions options, ServerContact contact, TaskCompletionSource<WorkerExit> exit)
    {
        _options = options;
        _contact = contact;
        _exit = exit;
        _courier.RegisterPeer(contact.Address, contact.BulkEndpoint);
        Receive<ClusterEvents.MemberUp>(m => ServerMaybeUp(m.Member));
        Receive<ClusterEvents.MemberWeaklyUp>(m => ServerMaybeUp(m.Member));
        Receive<ClusterEvents.MemberRemoved>(m => ServerMaybeGone(m.Member.Address, "was removed from the cluster"));
        Receive<ClusterEvents.UnreachableMember>(m => _log.Warning("node {0} is unreachable", m.Member.Address));
        Receive<ClusterEvents.IClusterDomainEvent>(_ => { });
        Receive<RetryJoin>(_ => AskToJoin());
        Receive<CheckAdmission>(_ => SayWhereTheJoinStands());
        Receive<JoinAccepted>(_ => FromServer(), Accepted);
        Receive<JoinRefused>(_ => FromServer(), r => Exit(2, $"the server refused this node: {r.Reason}"));
        Receive<TrainingDataChunk>(_ => FromServer(), Chunk);
        Receive<HostShard>(_ => FromServer(), Host);
        Receive<TrainingFinished>(_ => FromServer(), f => Exit(f.Succeeded ? 0 : 1, f.Succeeded
            ? (f.Message.Length > 0 ? f.Message : $"training finished after {f.Steps} steps") // e.g. "training stopped early after …"
            : $"training failed on the server: {f.Message}"));
        // From this node's own worker actor, which checked that the server sent it.
        Receive<WorkerRefused>(_ => Sender.Path.Parent.Equals(Self.Path), r => Exit(2, $"the parameter server refused {r.WorkerName}: {r.Reason}"));
        Receive<IWireMessage>(m => _log.Warning("dropped a {0} from {1}: only the parameter server may send it", m.GetType().Name, Sender.Path));
        Receive<DeliveryFailed>(f => _log.Warning("cannot reach the server's bulk channel ({0}); retrying", f.Reason));
        Receive<DataReady>(Ready);
        Receive<Status.Failure>(f => Exit(2, f.Cause is DataException or ArgumentException ? f.Cause.Message : f.Cause.ToString()));
        Receive<Terminated>(_ => Exit(1, "the worker actor stopped"));
    }

    public ITimerScheduler Timers { get; set; } = null!;

    public static Props Props(WorkerNodeOptions options, ServerContact contact, TaskCompletionSource<WorkerExit> exit) =>
        Akka.Actor.Props.Create(() => new WorkerAgent(options, contact, exit));

    private bool FromServer() => Sender.Path.Address.Equals(_contact.Address);

    protected override void PreStart()
    {
        _cluster.Subscribe(Self, ClusterEvents.SubscriptionInitialStateMode.InitialStateAsEvents,
            typeof(ClusterEvents.MemberUp), typeof(ClusterEvents.MemberWeaklyUp), typeof(ClusterEvents.MemberRemoved), typeof(ClusterEvents.UnreachableMember));
        Timers.StartSingleTimer("admission", CheckAdmission.Instance, _options.AdmissionPatience);
    }

    /// <summary>A join that has not finished says which stage it is stuck at, once: a silent worker cannot be told from a slow one.</summary>
    private void SayWhereTheJoinStands()
    {
        if (_exit.Task.IsCompleted)
        {
            // This incarnation is over (refused, stopped, or its server lost while it stops in the background): a
            // new one may be joining, and this line would speak for it.
            return;
        }
        if (_server is null)
        {
            _options.Announce?.Invoke($"after {_options.AdmissionPatience.TotalSeconds:0.#} s this node is not yet a member of the server's cluster at {_contact.Address} (the Akka join; still trying)");
        }
        else if (_accepted is null)
        {
            _options.Announce?.Invoke($"after {_options.AdmissionPatience.TotalSeconds:0.#} s the server's gatekeeper has not accepted this node (still asking every 2 s)");
        }
    }

    protected override void PostStop()
    {
        _cluster.Unsubscribe(Self);
        // Downed by the cluster (cut off from the server, or the server is gone), or the system shut down
        // some other way: this incarnation is over; the node may come back as a new one.
        Exit(1, "the worker node was shut down before training finished (downed by the cluster: the server is gone or unreachable)", serverLost: true);
    }

    /// <summary>A worker whose computation throws is stopped, not restarted with its step's work lost; the server reassigns its chunks.</summary>
    protected override SupervisorStrategy SupervisorStrategy() => new OneForOneStrategy(_ => Directive.Stop);

    private void ServerMaybeUp(Akka.Cluster.Member member)
    {
        if (_server is null && member.HasRole(ClusterNaming.ServerRole) && member.Address.Equals(_contact.Address))
        {
            _server = member.Address;
            _log.Info("parameter-server node is up at {0}", _server);
            AskToJoin();
        }
    }

    private void ServerMaybeGone(Address address, string what)
    {
        if (address.Equals(_server))
        {
            Exit(1, $"the parameter server at {address} {what} before training finished", serverLost: true);
        }
    }

    private void AskToJoin()
    {
        if (_accepted is not null || _server is null)
        {
            return;
        }
        long frameSize = Context.System.Settings.Config.GetByteSize("akka.remote.dot-netty.tcp.maximum-frame-size") ?? 128000;
        IActorRef gatekeeper = ((ExtendedActorSystem)Context.System).Provider.ResolveActorRef(new RootActorPath(_server) / "user" / ClusterNaming.GatekeeperName);
        _courier.Send(gatekeeper, new JoinRequest(_options.Name, WireFormat.ProtocolVersion, frameSize, _courier.Channel!.Endpoint, _options.StreamData), Self);
        Timers.StartSingleTimer("join", RetryJoin.Instance, TimeSpan.FromSeconds(2));
    }

    private void Accepted(JoinAccepted accepted)
    {
        if (_accepted is not null)
        {
            return;
        }
        _accepted = accepted;
        Timers.Cancel("join");
        Timers.Cancel("admission");
        // From now on tensors of this run's size may arrive, and no larger.
        TrainingConfig config = TrainingConfig.FromJson(accepted.ConfigJson);
        int features = accepted.PreprocessShift.Length;
        _courier.Channel!.Policy.SetRun(config.BuildArchitecture(features, Classes(accepted)).ParameterCount, features, config.LocalSteps?.Replicas ?? 0);
        _options.Announce?.Invoke($"joined the server at {_contact.BulkEndpoint}; training {accepted.Architecture}");
        if (_options.StreamData)
        {
            _courier.Send(Sender, RequestTrainingData.Instance, Self);
            return;
        }
        string? path = _options.DataOverride ?? accepted.DataPath;
        Task.Run(() => Load(path, accepted)).PipeTo(Self);
    }

    /// <summary>The server's training rows rebuilt from this node's copy of the data.</summary>
    private static DataReady Load(string? path, JoinAccepted accepted)
    {
        TrainingConfig config = TrainingConfig.FromJson(accepted.ConfigJson);
        Dataset raw = DataSources.Load(path, accepted.LabelColumn, accepted.CsvHeader).Train;
        string hash = raw.ContentHash();
        Dataset train = new Preprocessing(accepted.PreprocessShift, accepted.PreprocessScale).Apply(TrainingSession.SplitRows(config, raw, null, accepted.TestFraction).Train);
        // Images' byte codes made here, off the actor, as `train` and `bench` make theirs (TrainingSession.PrepareLocalGradients).
        _ = train.ByteCoded;
        return new DataReady(train, hash, config);
    }

    private void Chunk(TrainingDataChunk chunk)
    {
        if (_accepted is null)
        {
            return;
        }
        // Sizes come from the server's (authenticated) chunks; still, they are checked before allocating or copying.
        _streamed ??= new StreamedRows(_accepted.PreprocessShift.Length,
            Enumerable.Range(0, Classes(_accepted)).Select(c => c.ToString(System.Globalization.CultureInfo.InvariantCulture)).ToArray());
        switch (_streamed.Add(chunk))
        {
            case StreamedRows.Outcome.Malformed:
                Exit(1, $"the server streamed a malformed data chunk (rows {chunk.FirstRow}+{chunk.Labels.Length} of {chunk.TotalRows}, {chunk.Features} features)");
                return;
            case StreamedRows.Outcome.Completed:
                // The rows are the server's own, already preprocessed: they match its hash by construction. Their
                // byte codes, if they are images, are made off the actor.
                Dataset rows = _streamed.Rows!;
                string hash = _accepted.DataHash;
                TrainingConfig config = TrainingConfig.FromJson(_accepted.ConfigJson);
                Task.Run(() =>
                {
                    _ = rows.ByteCoded;
                    return new DataReady(rows, hash, config);
                }).PipeTo(Self);
                return;
        }
    }

    /// <summary>The number of classes: the output width of the architecture the server trains ("64-128-10 …").</summary>
    private static int Classes(JoinAccepted accepted) =>
        int.Parse(accepted.Architecture.Split(' ')[0].Split('-')[^1], System.Globalization.CultureInfo.InvariantCulture);

    private void Ready(DataReady data)
    {
        var architecture = data.Config.BuildArchitecture(data.Train.Features, data.Train.Classes.Count);
        ActorPath path = new RootActorPath(_server!) / "user" / "coordinator" / TrainingCoordinator.ServerName;
        IActorRef server = ((ExtendedActorSystem)Context.System).Provider.ResolveActorRef(path);
        _setup = new WorkerSetup(architecture, data.Train, data.Config, data.Hash, FirstWork);
        IActorRef worker = Context.ActorOf(Worker.Props(server, _options.Name, _setup), "worker");
        Context.Watch(worker);
        _log.Info("worker {0} started with {1} training rows", _options.Name, data.Train.Rows);
    }

    /// <summary>
    /// The server places a parameter shard on this node (<c>--server-shards</c>): its slice of θ and of the optimizer
    /// state, checked against the run's sizes before use. The shard answers to the server that sent this.
    /// </summary>
    private void Host(HostShard m)
    {
        if (_setup is not { } setup)
        {
            _log.Warning("dropped shard {0}: this node has not started its worker yet", m.Shard);
            return;
        }
        int parameters = setup.Architecture.ParameterCount;
        ShardPlan? plan = m.Shards >= 1 && m.Shards <= parameters ? new ShardPlan(parameters, m.Shards) : null;
        if (plan is null || m.Shard < 0 || m.Shard >= m.Shards || m.Parameters.Length != plan.Count(m.Shard) || m.OptimizerSteps < 0 || m.Step < 0)
        {
            Exit(1, $"the server sent a malformed parameter shard ({m.Shard} of {m.Shards}, {m.Parameters.Length} parameters)");
            return;
        }
        ShardUpdate update;
        try
        {
            update = new ShardUpdate(setup.Architecture, setup.Config.Optimizer, setup.Config.UpdateParts(), plan.Start(m.Shard), m.Parameters, m.OptimizerSteps, m.State);
        }
        catch (ArgumentException e)
        {
            Exit(1, $"the server sent a malformed parameter shard: {e.Message}");
            return;
        }
        Context.ActorOf(ParameterShard.Props(Sender, m.Shard, setup.Config.UpdateParts(), update, m.Step), $"shard-{m.Shard}-{++_shardsHosted}");
        _options.Announce?.Invoke($"hosting parameter shard {m.Shard} of {m.Shards} ({update.Count} parameters from {update.Start})");
    }

    /// <summary>Called on the worker's thread: only the options' callback and the process start time are touched.</summary>
    private void FirstWork(long step)
    {
        if (_options.Announce is { } announce)
        {
            double seconds = (DateTime.Now - System.Diagnostics.Process.GetCurrentProcess().StartTime).TotalSeconds;
            announce(string.Create(System.Globalization.CultureInfo.InvariantCulture, $"first work (step {step}) {seconds:F2} s after this process started"));
        }
    }

    private void Exit(int code, string message, bool serverLost = false)
    {
        if (_exit.TrySetResult(new WorkerExit(code, message, serverLost)))
        {
            if (code == 0) _log.Info(message); else _log.Error(message);
        }
    }

    private sealed record RetryJoin : INoSerializationVerificationNeeded
    {
        public static readonly RetryJoin Instance = new();
    }

    private sealed record CheckAdmission : INoSerializationVerificationNeeded
    {
        public static readonly CheckAdmission Instance = new();
    }

    private sealed record DataReady(Dataset Train, string Hash, TrainingConfig Config) : INoSerializationVerificationNeeded;
}
