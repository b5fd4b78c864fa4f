using System.Diagnostics;
using Akka.Actor;
using Akka.Event;
using DistributedBackprop.Actors.Serialization;
using DistributedBackprop.Actors.Transport;
using DistributedBackprop.Data;
using DistributedBackprop.Engine;
using DistributedBackprop.Kernels;
using DistributedBackprop.Network;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Actors;

/// <summary>
/// What a worker needs to compute gradients: the network shape, its (preprocessed) training rows, the run's
/// config, and the content hash of the raw data the rows came from (checked by the server).
/// <see cref="FirstWork"/>, if given, is called (on the worker's thread) with the step of its first work.
/// </summary>
public sealed record WorkerSetup(Architecture Architecture, Dataset Train, TrainingConfig Config, string DataHash, Action<long>? FirstWork = null)
{
    /// <summary>
    /// Runs the forward pass ahead on θ's pieces even when every shard is in this process (where the pieces come at
    /// once and it would only cost): lets a test drive that path with shards it plays itself.
    /// </summary>
    internal bool ForwardAheadWithLocalShards { get; init; }

    /// <summary>
    /// Local mode: the parameter server runs in this process on the same threads and takes each gradient's bound
    /// from the worker (<see cref="GradientsComputed.Bound"/>) rather than reading the gradient again; elsewhere
    /// the server bounds what arrives, and the worker sends none.
    /// </summary>
    public bool BoundsGradients { get; init; }
}

/// <summary>
/// A worker. Registers with the parameter server on start (<see cref="RegisterWorker"/>), then answers each
/// <see cref="ComputeGradients"/> with one <see cref="GradientsComputed"/> per canonical node of its chunk
/// range, computed on exactly the parameters of that step. It derives the step's rows itself from
/// (seed, epoch, step), so a step message carries no data.
///
/// Gradients are computed synchronously in the message handler, so the worker must run on a thread of its own,
/// away from Akka's default dispatcher and the thread pool: on a cluster node the compute dispatcher
/// (<see cref="DispatcherId"/>, one pinned thread per worker), in local mode one of <see cref="ComputeThreads"/>. Gradient buffers are pooled: a buffer lent for step s is lent again only
/// for a later step, by which time the server has finished with it. A <see cref="WorkerRefused"/> (data,
/// network or floating-point results differ from the server's) stops the worker and is passed to its parent.
/// </summary>
public sealed class Worker : ReceiveActor, IWithTimers
{
    public const string DispatcherId = "dbp.compute-dispatcher";

    private readonly IActorRef _server;
    private readonly string _name;
    private readonly WorkerSetup _setup;
    private readonly IUpdatePartComputer _computer;
    /// <summary>With --outer-overlap: this worker's replicas' values of their last rounds, to start work dealt ahead from.</summary>
    private readonly ReplicaChanges? _changes;
    /// <summary>
    /// With --outer-overlap: θ_0 of the last epoch's first round this worker was given work of, with that step (and
    /// the pool the array returns to once replaced). Work dealt ahead at an epoch's first round comes without θ: its
    /// base is this. (Later rounds' work carries per-replica starts or θ_i itself, never kept.)
    /// </summary>
    private (long Step, float[] Parameters, FloatArrayPool? Pool) _firstRoundTheta = (-1, [], null);
    /// <summary>The two highest steps of work received: a buffer lent for an older step is free (see <see cref="Rent"/>).</summary>
    private long _newestWork = -1, _newerWork = -1;
    private readonly List<TreeNode> _nodes = [];
    private readonly List<(float[] Buffer, long LentForStep)> _pool = [];
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly Courier _courier = Courier.Get(Context.System);
    private EpochPlan? _plan;
    private bool _working;
    /// <summary>With parameter shards: where they are, their slices, and θ assembled from their pieces.</summary>
    private IActorRef[]? _shards;
    private ShardPlan? _shardPlan;
    private PieceRelease? _pieceRelease;
    private ThetaAssembly? _theta;
    /// <summary>With a shard on another node: this worker's computer, to run a node's forward pass while θ arrives.</summary>
    private IForwardAhead? _ahead;
    /// <summary>The step whose first node's forward pass runs ahead, or −1.</summary>
    private long _aheadStep = -1;
    /// <summary>Time spent on that forward pass so far: part of the node's compute time as reported to the server.</summary>
    private long _aheadTicks;
    /// <summary>Work whose θ has not fully arrived from the shards yet.</summary>
    private readonly List<ComputeGradients> _waiting = [];
    private readonly List<(ParameterSlice Slice, IActorRef Sender)> _early = [];
    private long _earlyFloats;
    private float[]? _sliceScratch;

    public Worker(IActorRef server, string name, WorkerSetup setup)
    {
        _server = server;
        _name = name;
        _setup = setup;
        _changes = UpdateParts.CreateChanges(setup.Config, setup.Architecture.ParameterCount);
        _computer = UpdateParts.CreateComputer(setup.Config, setup.Architecture, setup.Train, _changes);
        // Only the parameter server gives work or refuses it; from anyone else these are dropped.
        Receive<WorkerAccepted>(m => Sender.Path.Equals(_server.Path), m => _log.Debug("{0} accepted; work from step {1}", _name, m.NextStep));
        Receive<WorkerRefused>(m => Sender.Path.Equals(_server.Path), m =>
        {
            _log.Error("{0} was refused by the parameter server: {1}", _name, m.Reason);
            Context.Parent.Tell(m);
            Context.Stop(Self);
        });
        Receive<ComputeGradients>(m => Sender.Path.Equals(_server.Path), Work);
        Receive<ShardMap>(m => Sender.Path.Equals(_server.Path), UseShards);
        Receive<ParameterSlice>(m => _shards is not null && (uint)m.Shard < (uint)_shards.Length && Sender.Equals(_shards[m.Shard]), TakeSlice);
        // A shard may answer the server's word faster than the server's map reaches this worker: kept until then,
        // from shards only and at most one model's worth (one slice of each shard is all that can come first).
        Receive<ParameterSlice>(m => _shards is null && Sender.Path.Name.StartsWith("shard-", StringComparison.Ordinal)
            && _earlyFloats + m.Values.Length <= _setup.Architecture.ParameterCount, m =>
        {
            _early.Add((m, Sender));
            _earlyFloats += m.Values.Length;
        });
        Receive<ParameterSlice>(m =>
        {
            m.Pool?.Return(m.Values);
            _log.Warning("{0} dropped a slice of θ from {1}: not one of its shards", _name, Sender.Path);
        });
        Receive<RetryRegistration>(_ => Register());
        Receive<IWireMessage>(m => _log.Warning("{0} dropped a {1} from {2}: only the parameter server may send it", _name, m.GetType().Name, Sender.Path));
        Receive<DeliveryFailed>(f => f.Message is RegisterWorker, f =>
        {
            // Nothing else would send it again: try once a second until the server has it (it accepts a
            // repeated registration).
            _log.Warning("{0} could not register with the parameter server ({1}); trying again in 1 s", _name, f.Reason);
            Timers.StartSingleTimer("register", RetryRegistration.Instance, TimeSpan.FromSeconds(1));
        });
        Receive<DeliveryFailed>(f => f.Message is GradientSlice, f =>
            // The shard then lacks that part; a deadline after the server has every part it asks the shards what
            // they lack and has it computed again.
            _log.Warning("{0} could not deliver a gradient slice to the parameter shard at {1} ({2})", _name, f.Recipient.Path, f.Reason));
        Receive<DeliveryFailed>(f =>
        {
            // The server does not wait for it: past the step deadline it deals these chunks to the others,
            // and it probes this worker with new work until an answer gets through (a connection that came
            // back). Stopping here would turn a network hiccup into a lost worker.
            _log.Warning("{0} could not deliver a {1} to the parameter server ({2}); the server deals those chunks to others and asks again", _name, f.Message.GetType().Name, f.Reason);
        });
    }

    public ITimerScheduler Timers { get; set; } = null!;

    public static Props Props(IActorRef server, string name, WorkerSetup setup) =>
        Akka.Actor.Props.Create(() => new Worker(server, name, setup)).WithDispatcher(DispatcherId);

    protected override void PreStart() => Register();

    private void Register() =>
        _courier.Send(_server, new RegisterWorker(_name, WireFormat.ProtocolVersion, _setup.DataHash, _setup.Architecture.Describe(), NumericFingerprint.Value), Self);

    private sealed record RetryRegistration : INoSerializationVerificationNeeded
    {
        public static readonly RetryRegistration Instance = new();
    }

    private void UseShards(ShardMap map)
    {
        if (map.Shards.Count < 1 || map.Shards.Count > _setup.Architecture.ParameterCount)
        {
            _log.Error("{0} ignored a map of {1} parameter shards", _name, map.Shards.Count);
            return;
        }
        var shards = new IActorRef[map.Shards.Count];
        for (int i = 0; i < shards.Length; i++)
        {
            if (_courier.Resolve(map.Shards[i]) is not { } shard)
            {
                _log.Error("{0} ignored a shard map naming {1}", _name, map.Shards[i].Path);
                return;
            }
            shards[i] = shard;
        }
        _shards = shards;
        _shardPlan = new ShardPlan(_setup.Architecture.ParameterCount, shards.Length);
        _pieceRelease = new PieceRelease(_setup.Architecture, _shardPlan, shards.Select(s => !_courier.IsLocal(s.Path.Address)).ToArray(), SendPiece);
        _theta = new ThetaAssembly(_setup.Architecture, _shardPlan);
        // Ahead only when a piece crosses a link: in local mode θ's pieces come at once, and the forward pass in
        // blocks would only cost.
        (_computer as IForwardAhead)?.Abandon();
        _ahead = _pieceRelease.AnyRemote || _setup.ForwardAheadWithLocalShards ? _computer as IForwardAhead : null;
        _aheadStep = -1;
        _waiting.Clear();
        _log.Info("{0} takes θ from {1} parameter shards", _name, shards.Length);
        foreach (var (slice, sender) in _early)
        {
            if ((uint)slice.Shard < (uint)shards.Length && sender.Equals(shards[slice.Shard]))
            {
                TakeSlice(slice);
            }
            else
            {
                slice.Pool?.Return(slice.Values);
            }
        }
        _early.Clear();
        _earlyFloats = 0;
    }

    /// <summary>
    /// A piece of a shard's slice of θ for a step: copied into place; work waiting for that step's θ runs once θ is
    /// whole, and until then its first node's forward pass runs on what has come.
    /// </summary>
    private void TakeSlice(ParameterSlice slice)
    {
        ThetaAssembly theta = _theta!;
        bool taken = theta.Take(slice.Shard, slice.Step, slice.Offset, slice.Values);
        slice.Pool?.Return(slice.Values);
        if (!taken)
        {
            _log.Warning("{0} dropped shard {1}'s piece of {2} values at {3} for step {4}", _name, slice.Shard, slice.Values.Length, slice.Offset, slice.Step);
            return;
        }
        long oldest = theta.OldestStep, whole = theta.WholeStep;
        for (int i = 0; i < _waiting.Count;)
        {
            ComputeGradients work = _waiting[i];
            if (work.Step < oldest || work.Step == whole)
            {
                // Older than every slice: the shards, and so the server, have moved past it. Or θ is whole for it.
                _waiting.RemoveAt(i);
                if (work.Step == whole)
                {
                    Compute(work, theta.Theta);
                }
            }
            else
            {
                i++;
            }
        }
        RunAhead();
    }

    /// <summary>
    /// With a shard on another node: the forward pass of the first node of the oldest waiting work, as far as the
    /// pieces of its step that have come allow (the rest of θ is still on its way).
    /// </summary>
    private void RunAhead()
    {
        if (_ahead is null)
        {
            return;
        }
        // Work of a step some shard has moved past can no longer run: the oldest of the rest.
        ComputeGradients? work = null;
        foreach (ComputeGradients waiting in _waiting)
        {
            if (waiting.Step >= _theta!.NewestStep && waiting.ChunkLo < waiting.ChunkHi && (work is null || waiting.Step < work.Step))
            {
                work = waiting;
            }
        }
        if (work is null)
        {
            return;
        }
        if (work.Step != _aheadStep)
        {
            _aheadStep = work.Step;
            _nodes.Clear();
            ChunkTree.Decompose(work.ChunkLo, work.ChunkHi, _setup.Config.UpdateParts(), _nodes);
            _aheadTicks = 0;
            _ahead.BeginForward(PlanFor(work), work.StepInEpoch, _nodes[0]);
        }
        long start = Stopwatch.GetTimestamp();
        _ahead.AdvanceForward(_theta!.Theta, _theta.At(work.Step));
        _aheadTicks += Stopwatch.GetTimestamp() - start;
    }

    private void Work(ComputeGradients message)
    {
        StepTimeline.Mark("received", message.Step, _name);
        if (_shards is null)
        {
            if (message.Parameters.Length > 0)
            {
                Compute(message, message.Parameters);
                KeepOrReturn(message);
            }
            else if (_changes is not null && message.Start == RoundStart.MinusOwnChange && _firstRoundTheta.Step == _changes.PreviousRound(message.Step))
            {
                Compute(message, _firstRoundTheta.Parameters);
            }
            else
            {
                // Dealt ahead without θ, but its round's work (which carried the base) was lost, or came after it (a
                // reconnect can reorder two connections' frames): the server deals the round again, with each
                // replica's start, once it misses the answer.
                _log.Warning("{0} cannot start step {1}: it came without θ, and this worker keeps no base for it", _name, message.Step);
            }
            return;
        }
        // θ comes from the shards. Slices of this step all here: compute; some newer: the step is over; else wait.
        if (_theta!.WholeStep == message.Step)
        {
            Compute(message, _theta.Theta);
        }
        else if (_theta.NewestStep <= message.Step)
        {
            _waiting.Add(message);
            RunAhead();
        }
    }

    private void Compute(ComputeGradients message, float[] parameters)
    {
        if (_setup.FirstWork is { } announce && !_working)
        {
            _working = true;
            announce(message.Step);
        }
        TrainingConfig config = _setup.Config;
        EpochPlan plan = PlanFor(message);
        // A node begun ahead is finished by the computer itself (same step and node); a later one starts afresh. The
        // time it ran ahead counts in the first node's compute time.
        long aheadTicks = _aheadStep == message.Step ? _aheadTicks : 0;
        if (_aheadStep != message.Step)
        {
            // Whatever the computer was begun on belongs to other work (dropped, or of another map).
            (_computer as IForwardAhead)?.Abandon();
        }
        _aheadStep = -1;
        if (message.Step > _newestWork)
        {
            (_newerWork, _newestWork) = (_newestWork, message.Step);
        }
        else if (message.Step < _newestWork && message.Step > _newerWork)
        {
            _newerWork = message.Step;
        }
        _nodes.Clear();
        if (_changes is not null)
        {
            if (message.Start == RoundStart.MinusOwnChange && MissingChange(message) is int missing)
            {
                // Dealt ahead for replicas whose last round this worker did not compute (its work was lost):
                // the server deals the round again, with each replica's start, once it misses the answer.
                _log.Warning("{0} cannot start replica {1} at step {2}: it has no value of that replica's previous round", _name, missing, message.Step);
                return;
            }
            // Each replica's value goes to the server on its own: it keeps them to start a replica's next round elsewhere.
            for (int replica = message.ChunkLo; replica < message.ChunkHi; replica++)
            {
                _nodes.Add(new TreeNode(replica, 1));
            }
        }
        else
        {
            ChunkTree.Decompose(message.ChunkLo, message.ChunkHi, config.UpdateParts(), _nodes);
        }
        // With shards, after θ's last piece (the forward pass may have run ahead on the others).
        StepTimeline.Mark("started", message.Step, _name);
        foreach (TreeNode node in _nodes)
        {
            long start = Stopwatch.GetTimestamp() - aheadTicks;
            aheadTicks = 0;
            // With shards the node's gradient is only cut into pieces here: one scratch buffer serves every node.
            float[] gradient = _shards is null ? Rent(message.Step) : _sliceScratch ??= new float[_setup.Architecture.ParameterCount];
            var parts = new BatchResult[UpdateParts.FiguresPerNode(config, node)];
            PieceRelease? release = _pieceRelease;
            _releasing = (message.Step, node, gradient);
            release?.Begin();
            // Blocks only when a piece crosses a link: they cost the backward pass a little (2-3 %), and gain nothing locally.
            BatchResult result = _computer.Compute(parameters, plan, message.StepInEpoch, node, gradient, parts, message.Start, release is { AnyRemote: true } ? release : null);
            StepTimeline.Mark("computed", message.Step, _name);
            if (release is null)
            {
                // Bounded here, on the core that just wrote the gradient, the update need not check the sum before applying it.
                float bound = _setup.BoundsGradients ? FiniteValues.Bound(gradient) : float.PositiveInfinity;
                StepTimeline.Mark("bounded", message.Step, _name);
                _courier.Send(_server, new GradientsComputed(message.Step, node, result, gradient, Stopwatch.GetElapsedTime(start).TotalSeconds) { PartResults = parts, Bound = bound }, Self);
                continue;
            }
            // The shards get what the backward pass has not released yet (all of a round's value); the server, which
            // only counts what is covered, the node's figures after every piece.
            release.SendRest();
            _courier.Send(_server, new GradientsComputed(message.Step, node, result, [], Stopwatch.GetElapsedTime(start).TotalSeconds) { PartResults = parts }, Self);
        }
    }

    private EpochPlan PlanFor(ComputeGradients work)
    {
        if (_plan is null || _plan.Epoch != work.Epoch)
        {
            _plan = EpochPlan.Create(_setup.Train.Rows, _setup.Config.BatchSize, _setup.Config.Seed, work.Epoch, recycle: _plan);
        }
        return _plan;
    }

    /// <summary>With shards: what the pieces being sent are cut from (the node being computed).</summary>
    private (long Step, TreeNode Node, float[] Gradient) _releasing;

    /// <summary>A piece of the node being computed, to its shard (<see cref="PieceRelease"/> says when).</summary>
    private void SendPiece(int shard, int start, int count)
    {
        var (step, node, gradient) = _releasing;
        float[] piece = Rent(step, count);
        Array.Copy(gradient, start, piece, 0, count);
        _courier.Send(_shards![shard], new GradientSlice(step, node, start - _shardPlan!.Start(shard), piece), Self);
    }

    /// <summary>
    /// θ of an epoch's first round is kept with --outer-overlap (the next round is dealt ahead without it), the
    /// one kept before going back to its pool; any other θ goes back to its pool now.
    /// </summary>
    private void KeepOrReturn(ComputeGradients work)
    {
        if (_changes is not null && work.StepInEpoch == 0 && work.Start == RoundStart.FromParameters)
        {
            _firstRoundTheta.Pool?.Return(_firstRoundTheta.Parameters);
            _firstRoundTheta = (work.Step, work.Parameters, work.Pool);
        }
        else
        {
            work.Pool?.Return(work.Parameters);
        }
    }

    /// <summary>A replica of the work whose value of the previous round this worker lacks, or null.</summary>
    private int? MissingChange(ComputeGradients work)
    {
        for (int replica = work.ChunkLo; replica < work.ChunkHi; replica++)
        {
            if (!_changes!.TryGetPrevious(replica, work.Step, out _))
            {
                return replica;
            }
        }
        return null;
    }

    /// <summary>
    /// A gradient buffer for work of <paramref name="step"/>. The server reads a step's buffers until it has
    /// applied that step, and it deals work of a later step only after that, except one update ahead
    /// (--outer-overlap): so a buffer is free once it was lent for a step older than the two newest this
    /// worker was given.
    /// </summary>
    private float[] Rent(long step, int length = -1)
    {
        if (length < 0)
        {
            length = _setup.Architecture.ParameterCount;
        }
        for (int i = 0; i < _pool.Count; i++)
        {
            if (_pool[i].LentForStep < _newerWork && _pool[i].LentForStep < step && _pool[i].Buffer.Length == length)
            {
                _pool[i] = (_pool[i].Buffer, step);
                return _pool[i].Buffer;
            }
        }
        var buffer = new float[length];
        _pool.Add((buffer, step));
        return buffer;
    }
}
