using System.Globalization;
using System.Diagnostics;
using Akka.Actor;
using Akka.Event;
using DistributedBackprop.Actors.Serialization;
using DistributedBackprop.Actors.Transport;
using DistributedBackprop.Engine;
using DistributedBackprop.Kernels;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Actors;

/// <summary>
/// The parameter server. Owns the flat parameter buffer, the optimizer state and the step counter (the
/// <see cref="TrainingSession"/>).
///
/// Protocol. Workers send <see cref="RegisterWorker"/> (answered by <see cref="WorkerAccepted"/>; work starts
/// with the next step). The coordinator sends <see cref="TrainEpoch"/>; for each step of that epoch the
/// server deals the C chunks to the registered workers in contiguous runs and sends each its
/// <see cref="ComputeGradients"/> with the step's parameters. Workers answer with one
/// <see cref="GradientsComputed"/> per canonical tree node. When every chunk is covered the server reduces
/// the nodes along the fixed chunk tree, applies the optimizer, tells the coordinator
/// <see cref="StepApplied"/>, and starts the next step; after the epoch's last step it sends
/// <see cref="EpochTrained"/> and waits for the next <see cref="TrainEpoch"/>.
///
/// Authority comes from the protocol, not from what a message says: <see cref="TrainEpoch"/> and
/// <see cref="SaveCheckpoint"/> are obeyed only from the coordinator, a remote <see cref="RegisterWorker"/>
/// only from a node the gatekeeper admitted, gradients only from registered workers; anything else is
/// refused, counted and logged. Stale (wrong step) and duplicate (overlapping an already covered chunk)
/// gradients are dropped and counted. A gradient of the wrong length or with NaN/Inf
/// stops training with <see cref="TrainingFailed"/>, keeping the last good parameters. A worker that dies
/// (DeathWatch) has its uncovered chunks dealt to the survivors, so the step completes with the same bits.
/// A worker that stays a member but does not answer within the step deadline (<see cref="StepDeadline"/>)
/// has its missing chunks dealt again to workers that did answer; the first result for a chunk wins (all
/// results are the same bits), a late one is dropped as a duplicate or stale, and the laggard gets no new
/// work until something from it arrives, except a probe (a copy of the step's smallest run) once per
/// deadline, so one whose answer was lost for good comes back. Work the bulk channel cannot deliver is
/// dealt around at once the same way. Chunks are dealt in proportion to each worker's measured pace
/// (<see cref="ChunkDealing"/>). Every one of these decisions is <see cref="StepScheduler{TWorker}"/>'s, a
/// plain class tested without actors; this actor turns them into messages.
/// The server never blocks: reduction and update are a few element-wise passes over the parameters.
/// </summary>
public sealed class ParameterServer : ReceiveActor, IWithUnboundedStash, IWithTimers
{
    private readonly TrainingSession _session;
    private readonly IActorRef _coordinator;
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly Courier _courier = Courier.Get(Context.System);
    private readonly string _architecture;
    private readonly TreeReducer _reducer;
    private readonly StepScheduler<WorkerSlot> _scheduler;
    private readonly List<ChunkAssignment<WorkerSlot>> _assignments = [];
    private readonly int _chunks;
    /// <summary>Without parameter shards: the layouts of the server's own update of the whole θ the tuner may pick (one, unless local mode's auto); with them, empty.</summary>
    private readonly UpdateSet[] _updateSets;
    /// <summary>Local mode with auto's two workers: times a copy of θ per worker against one θ in slices, in turns of <see cref="LaneTuner.StepsPerTurn"/> steps (<see cref="LaneTuner"/>); else null.</summary>
    private readonly LaneTuner? _layoutTuner;
    /// <summary>The layout this step's update uses (null with shards); chosen before it is dealt, as the workers read its θ.</summary>
    private UpdateSet? _current;
    /// <summary>When the step now running was dealt, after any copies were set (what the layout tuner times).</summary>
    private long _stepTimedFrom;
    private readonly ShardedState? _shards;
    /// <summary>With shards: <see cref="WorkerPeers"/>, forgotten whenever a worker registers or goes.</summary>
    private PeerActor[]? _workerPeers;
    /// <summary>Local mode's threads (null in a cluster): which one each worker runs on says which copy of θ it reads.</summary>
    private readonly ComputeThreads? _threads;
    /// <summary>Local mode: the update runs in this actor's handler, its lanes on the workers' threads; else in a task, its lanes on the thread pool.</summary>
    private readonly bool _updateInHandler;
    /// <summary>Where and how often to checkpoint inside an epoch (the coordinator asks for the epoch-end ones).</summary>
    private readonly CheckpointPolicy? _checkpoints;
    private bool _updating;
    private bool _returnParameters;
    private int _epochInProgress = -1;
    private StepInProgress? _step;
    private bool _failed;
    private readonly EpochCounters _epoch = new();
    private long _staleDropped, _duplicatesDropped, _unregisteredIgnored, _reassignments, _unauthorized;
    private readonly StepDeadline _deadline;
    private Task _checkpointWrites = Task.CompletedTask;
    private long _speculations;
    private readonly HashSet<Address> _leaving = [];
    /// <summary>With --outer-overlap: the θ each round is dealt with, and every replica's values of the last rounds (<see cref="RoundStart"/>).</summary>
    private readonly OverlappedRoundBases? _roundBases;
    private readonly ReplicaChanges? _changes;
    /// <summary>With --outer-overlap: the next round's work, dealt when this round was, and answers to it that came early.</summary>
    private readonly List<ChunkAssignment<WorkerSlot>> _dealtAhead = [];
    private long _aheadStep = -1, _aheadDealtAt;
    private readonly List<(WorkerSlot Worker, GradientsComputed Message)> _early = [];

    public ParameterServer(TrainingSession session, IActorRef coordinator, StepDeadline? deadline = null, int shards = 1, ComputeThreads? threads = null, CheckpointPolicy? checkpoints = null)
    {
        _checkpoints = checkpoints;
        if (shards > 1 && session.Config.LocalSteps is not null)
        {
            throw new ArgumentException("parameter shards and local steps do not go together yet");
        }
        _session = session;
        _coordinator = coordinator;
        _deadline = deadline ?? StepDeadline.From(Context.System.Settings.Config).ForUpdatesOf(session.Config.LocalSteps?.Steps ?? 1);
        string dealing = Context.System.Settings.Config.GetString("dbp.dealing", "proportional");
        bool dealByPace = dealing switch
        {
            "proportional" => true,
            "even" => false,
            _ => throw new ArgumentException($"dbp.dealing: '{dealing}' is neither proportional nor even"),
        };
        // The update's parts: a step's chunks, or with local steps a round's replicas.
        _chunks = session.Config.UpdateParts();
        _architecture = session.Architecture.Describe();
        // With shards the gradients go to them; the server's reducer only tracks what is covered (and the figures).
        _shards = shards > 1 ? new ShardedState(new ShardPlan(session.Parameters.Length, shards)) : null;
        _reducer = new TreeReducer(_chunks, _shards is null ? session.Architecture.ParameterCount : 0);
        _scheduler = new StepScheduler<WorkerSlot>(_chunks, _reducer, dealByPace);
        // The update is element-wise, so it is split into slices run in parallel (same bits as one pass);
        // during the update every worker is idle, waiting for the next step.
        int laneThreads = threads?.Count ?? Environment.ProcessorCount;
        // Local mode only: lane i on thread i, whose worker computes on copy i (UpdateLayout says when it pays). With
        // auto the server times that against one θ in slices as it goes, as the plain trainer's lanes do: the copies
        // win where the two cores are far apart, the slices where they share a cache (README, "One copy of θ per
        // worker" and "The faster update layout, by any margin"), and the host moves the vCPUs. Same bits either
        // way.
        string layout = Context.System.Settings.Config.GetString("dbp.update-layout", UpdateLayout.Auto);
        bool replicated = _shards is null && threads is not null && UpdateLayout.Replicates(layout, threads.Count, session.Config);
        bool[] layouts = _shards is not null ? [] : replicated && layout == UpdateLayout.Auto ? [true, false] : [replicated];
        _updateSets = layouts.Select(copies =>
        {
            int lanes = copies ? laneThreads : Math.Max(1, Math.Min(laneThreads, session.Parameters.Length / 65536));
            Action<Action<int>> forEach = threads is null ? work => Parallel.For(0, lanes, work) : work => threads.ForEachLane(lanes, work, onOwnThreads: copies);
            return new UpdateSet(new GuardedUpdate(session, _reducer, lanes, copies), forEach);
        }).ToArray();
        _current = _updateSets.FirstOrDefault();
        // Both layouts compute on every worker's core: the faster is kept, by any margin, and timed again often, as the
        // host moves the vCPUs.
        _layoutTuner = _updateSets.Length > 1
            ? new LaneTuner(Enumerable.Range(0, _updateSets.Length).ToArray(), stepsPerTurn: LaneTuner.StepsPerTurn,
                parallelism: _updateSets.Select(_ => laneThreads).ToArray(), retuneEvery: LaneTuner.RetuneLayoutEvery)
            : null;
        _roundBases = session.CreateRoundBases();
        _changes = UpdateParts.CreateChanges(session.Config, session.Parameters.Length);
        _updateInHandler = threads is not null;
        _threads = threads;

        Receive<RegisterWorker>(Register);
        Receive<TrainEpoch>(m => { if (FromCoordinator(m)) Train(m); });
        Receive<GradientsComputed>(Accept);
        Receive<UpdateApplied>(Applied);
        Receive<Status.Failure>(f =>
        {
            _updating = false;
            Stash.UnstashAll();
            Fail($"the update of step {_session.GlobalStep} failed: {f.Cause.Message}");
        });
        Receive<ShardReady>(ShardUp);
        Receive<SliceReduced>(m => FromShard(m.Shard), SliceSummed);
        Receive<SliceApplied>(m => FromShard(m.Shard), m =>
        {
            if (!m.Finite)
            {
                Fail(GuardedUpdate.Describe(UpdateOutcome.ParametersNotFinite, m.Step) + $" (parameter shard {m.Shard})");
            }
        });
        Receive<SliceCollected>(m => FromShard(m.Shard), Collected);
        Receive<ShardFailed>(m => FromShard(m.Shard), m => Fail(m.Reason));
        Receive<SliceMissing>(m => FromShard(m.Shard), Repair);
        Receive<DeliveryFailed>(f => _shards is not null && f.Message is HostShard or ApplySlice or PublishSlice or CollectSlice, f =>
            FailForResume($"cannot reach the parameter shard at {f.Recipient.Path.Address} ({f.Reason})"));
        Receive<DeliveryFailed>(f => f.Message is ComputeGradients { Start: RoundStart.MinusOwnChange } ahead && ahead.Step == _aheadStep, f =>
        {
            // Work dealt ahead that never reached its worker: dealt again when its round begins, not taken as sent.
            var work = (ComputeGradients)f.Message;
            _dealtAhead.RemoveAll(a => a.Worker.Ref.Equals(f.Recipient) && a.Lo == work.ChunkLo && a.Hi == work.ChunkHi);
        });
        Receive<DeliveryFailed>(f =>
        {
            // A step's work that cannot reach its worker would stall the step: its chunks go to the others at
            // once, and it is probed like a worker that missed a deadline. Whether it is gone is for DeathWatch to
            // say (a broken connection is not a dead node; removing it here would leave it idle for good).
            // A probe that cannot be delivered changes nothing: its run is dealt to someone else already.
            if (f.Message is ComputeGradients work && FindWorker(f.Recipient) is { Suspect: false } unreachable && _step is { } step && work.Step == step.Step && !_updating)
            {
                DealAround(unreachable, (work.ChunkLo, work.ChunkHi), $"cannot deliver step {work.Step}'s work ({f.Reason})");
            }
        });
        Receive<Terminated>(t =>
        {
            if (_shards?.IndexOf(t.ActorRef) is int shard && shard >= 0)
            {
                if (!_session.IsFinished || _shards.Collecting)
                {
                    FailForResume($"parameter shard {shard} on {t.ActorRef.Path.Address} is gone (its node died or left): its slice of θ and of the optimizer state is lost");
                }
                return;
            }
            WorkerGone(t.ActorRef, nodeLeft: false);
        });
        Receive<NodeLeaving>(m =>
        {
            // Only from this process (the message type is never serialized).
            if (!Sender.Path.Address.HasLocalScope)
            {
                return;
            }
            // The node's workers go now, not when DeathWatch reports them: DeathWatch waits for the node's removal
            // from the cluster, several rounds of gossip that can outlast the run (seen in CI: 3 s on a busy box),
            // while a leaving node computes nothing more. Their chunks go to the others at once; a gradient the
            // node still sends is an unregistered sender's, and its Terminated, later, finds nobody.
            // A node with no worker known here is remembered, so that a worker of it that goes later left too.
            List<IActorRef> departing = _scheduler.Workers.Where(w => w.Ref.Path.Address.Equals(m.Node)).Select(w => w.Ref).ToList();
            if (departing.Count == 0)
            {
                _leaving.Add(m.Node);
            }
            foreach (IActorRef worker in departing)
            {
                WorkerGone(worker, nodeLeft: true);
            }
        });
        Receive<CheckDeadline>(_ => CheckStepDeadline());
        Receive<SaveCheckpoint>(m => { if (FromCoordinator(m)) Checkpoint(m); });
        Receive<GetStatistics>(_ => _courier.Send(Sender, new ServerStatistics(_session.GlobalStep, _scheduler.Workers.Count, _staleDropped, _duplicatesDropped, _unregisteredIgnored, _reassignments, _unauthorized, _speculations, _failed), Self));
        Receive<GetWorkerStepCounts>(_ =>
        {
            // Only this process asks (the live rates); the type has no wire form, and a peer gets no answer.
            if (Sender.Path.Address.HasLocalScope)
            {
                Sender.Tell(new WorkerStepCounts(_scheduler.Workers.ToDictionary(w => w.Name, w => w.Steps, StringComparer.Ordinal)), Self);
            }
        });
    }

    public IStash Stash { get; set; } = null!;

    public ITimerScheduler Timers { get; set; } = null!;

    /// <param name="shards">parameter shards (<c>--server-shards</c>): 1 keeps θ and the update in this actor.</param>
    /// <param name="threads">local mode's threads (<see cref="ComputeThreads"/>): the server must then run on the first.</param>
    /// <param name="checkpoints">checkpoints due inside an epoch are taken by the server at their step.</param>
    public static Props Props(TrainingSession session, IActorRef coordinator, StepDeadline? deadline = null, int shards = 1, ComputeThreads? threads = null, CheckpointPolicy? checkpoints = null)
    {
        Props props = Akka.Actor.Props.Create(() => new ParameterServer(session, coordinator, deadline, shards, threads, checkpoints));
        return threads is null ? props : props.WithDispatcher(ComputeThreads.DispatcherId(0));
    }

    /// <summary>A local shard that throws is stopped, not restarted on state it may have half written: its loss stops the run.</summary>
    protected override SupervisorStrategy SupervisorStrategy() => new OneForOneStrategy(_ => Directive.Stop);

    protected override void PreStart() =>
        Timers.StartPeriodicTimer("deadline", CheckDeadline.Instance, TimeSpan.FromMilliseconds(Math.Clamp(_deadline.Floor.TotalMilliseconds / 4, 20, 250)));

    /// <summary>Only the coordinator runs epochs and names checkpoint files; from anyone else such a message is refused.</summary>
    private bool FromCoordinator(object message)
    {
        if (Sender.Equals(_coordinator))
        {
            return true;
        }
        _unauthorized++;
        _log.Warning("refused {0} from {1}: only the coordinator may send it", message.GetType().Name, Sender.Path);
        return false;
    }

    private void Register(RegisterWorker message)
    {
        if (!_courier.IsAdmitted(Sender.Path.Address))
        {
            _unauthorized++;
            _log.Warning("refused registration of {0} from {1}: its node was not admitted by the gatekeeper", message.WorkerName, Sender.Path.Address);
            return;
        }
        if (FindWorker(Sender) is not null)
        {
            _courier.Send(Sender, new WorkerAccepted(message.WorkerName, _session.GlobalStep + _session.StepsInUpdate), Self);
            return;
        }
        string? reason = Refusal(message);
        if (reason is null && _scheduler.Workers.Any(w => w.Name == message.WorkerName))
        {
            reason = $"a worker named {message.WorkerName} is already registered; give each worker its own --name";
        }
        if (reason is not null)
        {
            _log.Error("refused {0}: {1}", message.WorkerName, reason);
            _courier.Send(Sender, new WorkerRefused(message.WorkerName, reason), Self);
            return;
        }
        // Placed by the coordinator before it started the worker, and for its life: looked up once, not per step.
        var slot = new WorkerSlot(Sender, message.WorkerName) { Thread = Math.Max(0, _threads?.ThreadOf(message.WorkerName) ?? 0) };
        _scheduler.Add(slot);
        _workerPeers = null;
        Context.Watch(Sender);
        _log.Info("worker {0} registered ({1} workers)", message.WorkerName, _scheduler.Workers.Count);
        _coordinator.Tell(new WorkerJoined(message.WorkerName, _scheduler.Workers.Count));
        _courier.Send(Sender, new WorkerAccepted(message.WorkerName, _step is null ? _session.GlobalStep : _session.GlobalStep + _session.StepsInUpdate), Self);
        if (_shards is { AllReady: true })
        {
            TellShardsAbout([slot]);
        }
        if (_step is not null && _scheduler.HasOrphans)
        {
            // Every worker had died mid-step: the newcomer takes over the chunks nobody holds.
            _scheduler.AdoptOrphans(slot, _assignments);
            SendAssignments();
        }
        else if (_step is null && _epochInProgress >= 0 && !_failed)
        {
            StartStep();
        }
    }

    /// <summary>Why a worker would not reproduce this server's bits, or null if it would.</summary>
    private string? Refusal(RegisterWorker m)
    {
        if (m.ProtocolVersion != WireFormat.ProtocolVersion)
        {
            return $"protocol version {m.ProtocolVersion}, the server speaks {WireFormat.ProtocolVersion}";
        }
        if (m.DataHash != _session.DataHash)
        {
            return $"it loaded different training data (content hash {Short(m.DataHash)}, the server's is {Short(_session.DataHash)})";
        }
        if (m.Architecture != _architecture)
        {
            return $"it built the network {m.Architecture}, the server trains {_architecture}";
        }
        if (m.NumericFingerprint != NumericFingerprint.Value)
        {
            return $"its CPU/runtime computes different floating-point results (fingerprint {m.NumericFingerprint}, the server's is {NumericFingerprint.Value}), so it could not reproduce the server's bits";
        }
        return null;
    }

    private static string Short(string hash) => hash.Length > 12 ? hash[..12] + "…" : hash;

    private void Train(TrainEpoch message)
    {
        if (_failed)
        {
            Sender.Tell(new TrainingFailed("training has already failed"));
            return;
        }
        if (_session.IsFinished || message.Epoch != _session.Epoch || _epochInProgress >= 0)
        {
            _coordinator.Tell(new TrainingFailed($"asked to train epoch {message.Epoch}, but the server is at epoch {_session.Epoch} (step {_session.GlobalStep} of {_session.TotalSteps})"));
            return;
        }
        _epochInProgress = message.Epoch;
        _returnParameters = message.ReturnParameters;
        _epoch.Reset();
        foreach (WorkerSlot worker in _scheduler.Workers)
        {
            worker.StepsThisEpoch = 0;
            worker.ComputeSeconds = 0;
            worker.StepSeconds.Clear();
        }
        StartStep();
    }

    private void StartStep()
    {
        if (_scheduler.Workers.Count == 0)
        {
            _log.Info("no workers registered; step {0} waits for one", _session.GlobalStep);
            return;
        }
        if (_shards is { AllReady: false })
        {
            if (!_shards.Placed)
            {
                PlaceShards();
            }
            return;
        }
        _shards?.StartStep();
        // The parameters are lent to the workers for the step, not copied: the server writes them again only
        // after every chunk of the step has arrived, i.e. after every worker has finished reading them (a
        // worker that died has stopped reading before its Terminated arrives). Across processes they are
        // serialized anyway.
        _reducer.Reset();
        ChooseUpdateLayout();
        // With overlap a round is dealt with θ one outer step old, kept aside (θ itself is written while it runs).
        float[] parameters = _roundBases?.Begin(_session.UpdateInEpoch, _session.Parameters, _session.UpdateFollowsInEpoch) ?? _session.Parameters;
        _step = new StepInProgress(_session.GlobalStep, _session.Epoch, _session.StepInEpoch, parameters);
        _scheduler.StartStep(Stopwatch.GetTimestamp(), _deadline.Current, _assignments);
        if (_roundBases is null)
        {
            SendAssignments();
            return;
        }
        // Work already dealt ahead to the same worker is not sent again; the new dealing is dealt ahead for the next round.
        var dealing = new List<ChunkAssignment<WorkerSlot>>(_assignments);
        if (_aheadStep == _step.Step)
        {
            _assignments.RemoveAll(_dealtAhead.Contains);
            // Timed from when it was dealt: a round whose answers were all in early would otherwise take ~0 s and
            // shrink the deadline of the rounds that are not.
            _step.DealtAt = _aheadDealtAt;
        }
        SendAssignments();
        DealAhead(dealing);
        ReplayEarlyAnswers();
    }

    /// <summary>
    /// --outer-overlap: the next round of the epoch goes out with this one's dealing, with θ now (θ_i, the next
    /// round's base; none at an epoch's first round, whose base it is); each worker starts it from its own values of this round as soon as it has them
    /// (<see cref="RoundStart.MinusOwnChange"/>), while this round's values travel and are averaged.
    /// </summary>
    private void DealAhead(List<ChunkAssignment<WorkerSlot>> dealing)
    {
        StepInProgress step = _step!;
        _dealtAhead.Clear();
        _aheadStep = -1;
        if (!_session.UpdateFollowsInEpoch)
        {
            return;
        }
        _aheadStep = step.Step + _session.StepsInUpdate;
        _aheadDealtAt = Stopwatch.GetTimestamp();
        int aheadInEpoch = step.StepInEpoch + _session.StepsInUpdate;
        // At an epoch's first round the next round's base is this round's θ, which every worker of the dealing was
        // just sent with its work of this round (the same connection, in order): the ahead work comes without it
        // (the worker keeps that base) rather than carrying the same θ again over the link while every worker
        // waits for its first θ of the epoch. Measured on 1 Gbit/s links this halves what the server sends then.
        float[] aheadBase = step.StepInEpoch == 0 ? [] : _roundBases!.BaseOf(_session.UpdateInEpoch + 1);
        foreach (ChunkAssignment<WorkerSlot> work in dealing)
        {
            StepTimeline.Mark("dealt", _aheadStep, work.Worker.Name);
            _courier.Send(work.Worker.Ref, new ComputeGradients(_aheadStep, step.Epoch, aheadInEpoch, work.Lo, work.Hi, aheadBase) { Start = RoundStart.MinusOwnChange }, Self);
            _dealtAhead.Add(work);
        }
    }

    /// <summary>Answers to this round that arrived while the previous one was in, accepted now as if they had just come.</summary>
    private void ReplayEarlyAnswers()
    {
        if (_early.Count == 0)
        {
            return;
        }
        var early = _early.ToArray();
        _early.Clear();
        foreach (var (worker, message) in early)
        {
            if (_scheduler.Workers.Contains(worker))
            {
                AcceptFrom(worker, message);
            }
            else
            {
                message.Pool?.Return(message.Gradient);
            }
        }
    }

    /// <summary>
    /// The update layout of this step, before anything is dealt (the workers compute on the layout's θ): local mode's
    /// auto with two workers asks the tuner. The copies of θ are set from the session's when the step switches to them
    /// and at each epoch's start (two array copies an epoch: whatever wrote the session's θ between epochs, the workers
    /// compute on it), each by the thread that reads it next, before the time the tuner takes starts.
    /// </summary>
    private void ChooseUpdateLayout()
    {
        UpdateSet? next = _layoutTuner is null ? _current : _updateSets[_layoutTuner.Next()];
        if (next is { Update.Replicated: true } && (next != _current || _session.StepInEpoch == 0))
        {
            next.Update.SyncCopies(next.ForEach);
        }
        _current = next;
        _stepTimedFrom = Stopwatch.GetTimestamp();
    }

    /// <summary>Sends the scheduler's decisions: each run to its worker, with the step's parameters.</summary>
    private void SendAssignments()
    {
        StepInProgress step = _step!;
        foreach (var (worker, lo, hi) in _assignments)
        {
            if (_changes is not null && step.StepInEpoch > 0)
            {
                SendWithStarts(worker, lo, hi);
                continue;
            }
            // With shards θ comes from them: the work names the step only.
            StepTimeline.Mark("dealt", step.Step, worker.Name);
            float[] parameters = _shards is not null ? [] : _current!.Update.Replicated ? _current.Update.CopyOf(worker.Thread) : step.Parameters;
            _courier.Send(worker.Ref, new ComputeGradients(step.Step, step.Epoch, step.StepInEpoch, lo, hi, parameters), Self);
        }
        _assignments.Clear();
    }

    /// <summary>
    /// --outer-overlap, a round after an epoch's first dealt now (not ahead): each replica goes out on its own
    /// with its start S^r = θ_{i−1} − R·ℓ_{i−1}^r, from the values the server kept, whoever computed them before.
    /// </summary>
    private void SendWithStarts(WorkerSlot worker, int lo, int hi)
    {
        StepInProgress step = _step!;
        for (int replica = lo; replica < hi; replica++)
        {
            if (!_changes!.TryGetPrevious(replica, step.Step, out float[] change))
            {
                Fail($"replica {replica}'s value of the round before step {step.Step} is missing; the round cannot be dealt");
                return;
            }
            // A new array per message: it is lent to the worker (in one process) for as long as it computes.
            var start = new float[change.Length];
            ReplicaChanges.StartOf(step.Parameters, change, _chunks, start);
            StepTimeline.Mark("dealt", step.Step, worker.Name);
            _courier.Send(worker.Ref, new ComputeGradients(step.Step, step.Epoch, step.StepInEpoch, replica, replica + 1, start), Self);
        }
    }

    private void Accept(GradientsComputed message)
    {
        WorkerSlot? worker = FindWorker(Sender);
        if (worker is null)
        {
            message.Pool?.Return(message.Gradient);
            _unregisteredIgnored++;
            _log.Warning("ignored gradients for step {0} from unregistered {1}", message.Step, Sender.Path);
            return;
        }
        // As it comes: an answer to a round dealt ahead waits here for its round, a stale one is dropped after.
        StepTimeline.Mark("arrived", message.Step, worker.Name);
        if (_roundBases is not null && message.Step == _aheadStep && !_failed && _step?.Step != message.Step)
        {
            // An answer to the round dealt ahead: kept until that round is the server's. Each worker was dealt
            // each replica at most once ahead (probes included), which bounds what can legitimately come.
            _scheduler.HeardFrom(worker);
            if (_early.Count < _chunks * (_scheduler.Workers.Count + 1))
            {
                _early.Add((worker, message));
            }
            else
            {
                message.Pool?.Return(message.Gradient);
                _staleDropped++;
            }
            return;
        }
        AcceptFrom(worker, message);
    }

    private void AcceptFrom(WorkerSlot worker, GradientsComputed message)
    {
        if (_scheduler.HeardFrom(worker))
        {
            _log.Info("{0} answers again (step {1}); it gets work from the next step", worker.Name, message.Step);
        }
        if (_failed || _step is null || message.Step != _step.Step || _updating)
        {
            message.Pool?.Return(message.Gradient);
            _staleDropped++;
            _epoch.Dropped++;
            return;
        }
        if (message.Gradient.Length != (_shards is null ? _session.Parameters.Length : 0))
        {
            Fail(_shards is null
                ? $"{worker.Name} sent a gradient of {message.Gradient.Length} values for step {message.Step}; the model has {_session.Parameters.Length} parameters"
                : $"{worker.Name} sent the server a gradient of {message.Gradient.Length} values for step {message.Step}; with parameter shards gradients go to the shards");
            return;
        }
        if (!ChunkTree.IsCanonical(message.Node, _chunks) || (_changes is not null && message.Node.Size != 1))
        {
            Fail(_changes is null
                ? $"{worker.Name} sent node {message.Node} for step {message.Step}, which is not a node of the chunk tree over {_chunks} chunks"
                : $"{worker.Name} sent node {message.Node} for step {message.Step}; with --outer-overlap each replica's value comes on its own");
            return;
        }
        int parts = UpdateParts.FiguresPerNode(_session.Config, message.Node);
        if (message.PartResults.Length != parts)
        {
            Fail($"{worker.Name} sent {message.PartResults.Length} part results with node {message.Node} for step {message.Step}; it covers {parts}");
            return;
        }
        // A peer's gradient is bounded as it arrives (a NaN or an infinity gives no bound), which checks it and names
        // the worker it came from; the bounds let the update add and apply in one pass (TreeReducer.SumIsFinite). In
        // local mode the workers are this process's own code and bound the gradient on the core that wrote it: a pass
        // here cost ~60 µs a step (timed with temporary timestamps: docs/architecture.md). One that brings no bound
        // (a NaN or an infinity in it) leaves the update to check the sum before writing anything.
        float bound = _updateInHandler ? message.Bound : FiniteValues.Bound(message.Gradient);
        if ((!_updateInHandler && !float.IsFinite(bound)) || !double.IsFinite(message.Result.LossSum))
        {
            Fail($"{worker.Name} sent a non-finite gradient (NaN or infinity) for step {message.Step}, chunks {message.Node}; training stopped, the parameters after step {_session.GlobalStep} are kept");
            return;
        }
        if (!_reducer.TryAdd(message.Node, message.Gradient, message.Result, message.PartResults, bound))
        {
            message.Pool?.Return(message.Gradient);
            _duplicatesDropped++;
            _epoch.Dropped++;
            return;
        }
        // Kept before the reduction adds into it: a replica's next round may be dealt elsewhere (SendWithStarts).
        _changes?.Keep(message.Node.Lo, message.Step, message.Gradient);
        if (message.Pool is not null)
        {
            _step.Pooled.Add((message.Gradient, message.Pool));
        }
        long now = Stopwatch.GetTimestamp();
        _step.FirstArrival ??= now;
        worker.ComputeSeconds += message.ComputeSeconds;
        if (_scheduler.Delivered(worker, ChunkTree.CoveredChunks(message.Node, _chunks), message.ComputeSeconds))
        {
            worker.StepsThisEpoch++;
            worker.Steps++;
        }
        if (_reducer.IsComplete)
        {
            _epoch.WaitingForSlowest += Stopwatch.GetElapsedTime(_step.FirstArrival.Value, now).TotalSeconds;
            _step.CoveredAt = now;
            StepTimeline.Mark("covered", message.Step, "server");
            if (_shards is null)
            {
                FinishStep(now);
            }
            else
            {
                ApplyOnShards();
            }
        }
    }

    /// <summary>
    /// All chunks are in: plan the tree additions, then add, check and apply the optimizer in parallel slices
    /// (<see cref="GuardedUpdate"/>), and come back with <see cref="UpdateApplied"/>. On the thread pool this runs
    /// off the actor: the task owns the session's parameters and optimizer until then, and the actor stashes what
    /// would touch them. In local mode it runs here, on the first worker's thread (every worker is waiting now), its
    /// lanes taken by the workers' idle threads (<see cref="ComputeThreads"/>).
    /// </summary>
    private void FinishStep(long start)
    {
        StepInProgress step = _step!;
        _deadline.StepTook(Stopwatch.GetElapsedTime(step.DealtAt, start));
        var (gradient, result) = _reducer.Plan();
        _updating = true;
        GuardedUpdate update = _current!.Update;
        Action<Action<int>> forEachLane = _current.ForEach;
        if (_updateInHandler)
        {
            UpdateApplied applied;
            try
            {
                UpdateOutcome outcome = update.Apply(gradient, forEachLane, out float learningRate);
                applied = new UpdateApplied(step.Step, result, learningRate, start, outcome);
            }
            catch (Exception e)
            {
                Self.Tell(new Status.Failure(e));
                return;
            }
            Applied(applied);
            return;
        }
        Task.Run(() =>
        {
            UpdateOutcome outcome = update.Apply(gradient, forEachLane, out float learningRate);
            return new UpdateApplied(step.Step, result, learningRate, start, outcome);
        }).PipeTo(Self);
    }

    private void Applied(UpdateApplied applied)
    {
        _updating = false;
        Stash.UnstashAll();
        StepInProgress step = _step!;
        foreach (var (array, pool) in step.Pooled)
        {
            pool.Return(array);
        }
        if (applied.Outcome != UpdateOutcome.Applied)
        {
            Fail(GuardedUpdate.Describe(applied.Outcome, _session.GlobalStep));
            return;
        }
        // With shards: the server has told them to apply (they do so after; their own events say when).
        StepTimeline.Mark("applied", applied.Step, "server");
        _layoutTuner?.Record(Stopwatch.GetElapsedTime(_stepTimedFrom).TotalSeconds);
        if (_current is { Update.Replicated: true })
        {
            _epoch.StepsWithThetaCopies++;
        }
        _session.EndStep();
        _epoch.Add(applied.Result, applied.LearningRate);
        _step = null;
        // Indexed loops: foreach over the IReadOnlyList would box an enumerator every step.
        int workers = 0;
        for (int i = 0; i < _scheduler.Workers.Count; i++)
        {
            WorkerSlot worker = _scheduler.Workers[i];
            if (worker.DeliveredThisStep)
            {
                worker.StepSeconds.Add(worker.ComputeThisStep);
                workers++;
            }
        }
        _scheduler.EndStep();
        RoundReport? round = _session.Config.LocalSteps is null ? null : RoundReport.From(_reducer.PartResults, _current!.Update.LastStepNorm);
        _coordinator.Tell(new StepApplied(_session.GlobalStep, step.Epoch, step.StepInEpoch, applied.Result, workers) { Round = round });
        bool epochDone = _session.StepInEpoch == 0 || _session.IsFinished;
        // A checkpoint due inside the epoch is taken here, between this update and the next step's dealing, so it
        // holds exactly the step it is due at. (The coordinator used to ask on StepApplied; when steps are faster
        // than its thread wakes up, that landed a step or two late: a checkpoint "every 5 steps" after step 6.)
        // The epoch's own checkpoint follows once the epoch is scored (EpochPersisted).
        if (!epochDone && _checkpoints is not null && _checkpoints.DueAfter(step.Step, _session.GlobalStep) && _session.Config.CheckpointsInsideEpochs())
        {
            Checkpoint(new SaveCheckpoint(_checkpoints.Path), _coordinator);
        }
        if (!epochDone)
        {
            StartStep();
        }
        _epoch.ServerSeconds += Stopwatch.GetElapsedTime(applied.Started).TotalSeconds;
        if (epochDone)
        {
            // The epoch's steps are done even while its state is being gathered: a worker registering now must
            // not start the next epoch's first step before the coordinator asks for it.
            _epochInProgress = -1;
            if (_shards is null)
            {
                EndEpoch(step.Epoch);
            }
            else
            {
                // θ and the optimizer state live on the shards: gathered here for the evaluation, the model and checkpoints.
                Collect(() => EndEpoch(step.Epoch));
            }
        }
    }

    private void EndEpoch(int epoch)
    {
        double seconds = _epoch.Clock.Elapsed.TotalSeconds;
        _coordinator.Tell(new EpochTrained(
            epoch, _session.GlobalStep, _epoch.LossSum, _epoch.Correct, _epoch.Rows, _epoch.LearningRate, seconds,
            _epoch.WaitingForSlowest, _epoch.ServerSeconds, _epoch.Dropped, _scheduler.Workers.Count, _epoch.StepsWithThetaCopies,
            _scheduler.Workers.ToDictionary(w => w.Name, w => w.StepsThisEpoch / seconds),
            _scheduler.Workers.ToDictionary(w => w.Name, w => w.ComputeSeconds / seconds),
            _scheduler.Workers.ToDictionary(w => w.Name, w => Quantile(w.StepSeconds, 0.5)),
            _scheduler.Workers.ToDictionary(w => w.Name, w => Quantile(w.StepSeconds, 0.9)),
            _returnParameters ? (float[])_session.Parameters.Clone() : []));
    }

    /// <summary>A worker is gone: DeathWatch said so (<paramref name="nodeLeft"/> false), or its node is leaving the cluster.</summary>
    private void WorkerGone(IActorRef reference, bool nodeLeft)
    {
        WorkerSlot? worker = FindWorker(reference);
        if (worker is null)
        {
            return;
        }
        Departure departure = _scheduler.Remove(worker, inStep: _step is not null, _assignments);
        _workerPeers = null;
        int left = _scheduler.Workers.Count;
        bool graceful = nodeLeft || _leaving.Remove(reference.Path.Address);
        if (_session.IsFinished) _log.Info("worker {0} left after training ({1} left)", worker.Name, left);
        else if (graceful) _log.Info("worker {0} left the cluster (a graceful stop; {1} left)", worker.Name, left);
        else _log.Warning("worker {0} died ({1} left)", worker.Name, left);
        if (!_session.IsFinished)
        {
            _coordinator.Tell(new WorkerLeft(worker.Name, left, graceful));
        }
        if (_shards is { Placed: true, AllReady: false } && !_failed && _shards.PlacedOn(reference.Path.Address))
        {
            // A shard placed on its node never came up: nothing of it will.
            FailForResume($"worker {worker.Name} died before the parameter shard placed on its node was up");
            return;
        }
        if (departure == Departure.NothingMissing)
        {
            return;
        }
        _reassignments++;
        if (departure == Departure.Orphaned)
        {
            _log.Warning("no workers left; step {0} waits for one to register", _step!.Step);
            return;
        }
        SendAssignments();
    }

    /// <summary>
    /// The step has waited longer than the deadline: deal the chunks still missing again, to the workers
    /// that have delivered this step (or, failing those, to any other worker), and mark the laggards.
    /// </summary>
    private void CheckStepDeadline()
    {
        if (_failed)
        {
            return;
        }
        if (_shards?.Overdue(ShardPatience) is { } overdue)
        {
            // A shard's answer was lost (placement or a collect): nothing else would ever complete it.
            FailForResume($"{overdue} for {ShardPatience.TotalSeconds:F0} s");
            return;
        }
        if (_step is not { } step || _updating || _scheduler.Workers.Count == 0)
        {
            return;
        }
        if (_shards is { AllReduced: false, Collecting: false } && step.CoveredAt is { } covered)
        {
            // Every part reached the server, yet a shard has not summed them: a gradient slice was lost on its way
            // (its worker died between its slices and its report, or the shard took an overlapping speculative
            // node). A deadline on, the shards say which parts they lack and those are computed again; if that
            // does not complete the step either, the run stops and resumes from its checkpoint with the same bits.
            TimeSpan sinceCovered = Stopwatch.GetElapsedTime(covered);
            if (sinceCovered > ShardPatience)
            {
                FailForResume($"parameter shards {string.Join(", ", _shards.NotReduced())} have not summed step {step.Step} {ShardPatience.TotalSeconds:F0} s after every part reached the server");
            }
            else if (sinceCovered > _deadline.Current && Stopwatch.GetElapsedTime(step.AskedMissingAt ?? covered) >= _deadline.Current)
            {
                step.AskedMissingAt = Stopwatch.GetTimestamp();
                foreach (int shard in _shards.NotReduced())
                {
                    _courier.Send(_shards.Refs[shard]!, new AskMissing(step.Step), Self);
                }
            }
            return; // nothing is missing here: the scheduler has nothing to deal again
        }
        TimeSpan waited = Stopwatch.GetElapsedTime(_scheduler.DealtAt);
        if (waited < _deadline.Current)
        {
            return;
        }
        DealAround(null, null, string.Create(CultureInfo.InvariantCulture, $"step {step.Step} waited {waited.TotalSeconds:F2} s (deadline {_deadline.Current.TotalSeconds:F2} s)"));
    }

    /// <summary>Work missing from <paramref name="only"/> (or anyone) goes to others (<see cref="StepScheduler{TWorker}.DealAround"/>).</summary>
    private void DealAround(WorkerSlot? only, (int Lo, int Hi)? run, string why)
    {
        if (_scheduler.DealAround(only, run, Stopwatch.GetTimestamp(), _assignments) is not { } dealt)
        {
            return;
        }
        _log.Warning("{0} for {1}; their chunks go to {2}", why,
            string.Join(", ", dealt.Laggards.Select(l => l.Name)), string.Join(", ", dealt.Helpers.Select(h => h.Name)));
        _speculations++;
        if (_shards is { AllReady: true })
        {
            // Work dealt again may have waited on a slice of θ that was lost: the shards send it again (the
            // step is not applied yet, so it is this step's θ; a worker that has it copies the same values).
            var publish = new PublishSlice(_assignments.Select(a => PeerOf(a.Worker)).Distinct().ToArray());
            foreach (IActorRef? shard in _shards.Refs)
            {
                _courier.Send(shard!, publish, Self);
            }
        }
        SendAssignments();
    }

    private void Checkpoint(SaveCheckpoint message) => Checkpoint(message, Sender);

    private void Checkpoint(SaveCheckpoint message, IActorRef requester)
    {
        if (_failed)
        {
            // After a failed update the parameters may be those of no step at all (an overflow is not undone):
            // the checkpoint on disk is the last good one and stays so.
            requester.Tell(new TrainingFailed($"training has failed; {message.Path} is left as it was"));
            return;
        }
        if (_updating)
        {
            // The session is being written off the actor; take the checkpoint once the update is in.
            Stash.Stash();
            return;
        }
        if (_shards is not null)
        {
            Collect(() => WriteCheckpoint(requester, message.Path));
            return;
        }
        WriteCheckpoint(requester, message.Path);
    }

    private void WriteCheckpoint(IActorRef requester, string path)
    {
        if (_failed)
        {
            requester.Tell(new TrainingFailed($"training has failed; {path} is left as it was"));
            return;
        }
        // The state is copied here, between steps; the disk (and its fsync) is waited for off the actor, so
        // heartbeats and DeathWatch never queue behind it. Writes run one after another, in order, so the file
        // always ends up holding the newest checkpoint.
        CheckpointSnapshot snapshot = _session.SnapshotCheckpoint();
        _checkpointWrites = _checkpointWrites.ContinueWith(_ =>
        {
            try
            {
                snapshot.Save(path);
                requester.Tell(new CheckpointSaved(path, snapshot.GlobalStep));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                requester.Tell(new TrainingFailed(e.Message.StartsWith(path, StringComparison.Ordinal) ? e.Message : $"{path}: cannot write the checkpoint: {e.Message}"));
            }
        }, CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default);
    }

    /// <summary>The q-quantile of <paramref name="values"/> (nearest rank), 0 for none.</summary>
    private static double Quantile(List<double> values, double q)
    {
        if (values.Count == 0)
        {
            return 0;
        }
        double[] sorted = values.Order().ToArray();
        return sorted[Math.Min(sorted.Length - 1, (int)Math.Ceiling(q * sorted.Length) - 1)];
    }

    /// <summary>The registered worker behind an actor ref (an indexed loop, allocating nothing: this runs for every gradient message).</summary>
    private WorkerSlot? FindWorker(IActorRef reference)
    {
        for (int i = 0; i < _scheduler.Workers.Count; i++)
        {
            if (_scheduler.Workers[i].Ref.Equals(reference))
            {
                return _scheduler.Workers[i];
            }
        }
        return null;
    }

    /// <summary>State was lost with a node, or a shard's answer: the run stops as restartable (<see cref="TrainingFailed.Restartable"/>).</summary>
    private void FailForResume(string what) =>
        Fail($"{what}; restart the server with the same command line to resume from its checkpoint (the same bits follow)", restartable: true);

    /// <param name="restartable">state was lost with a node (see <see cref="TrainingFailed.Restartable"/>).</param>
    private void Fail(string reason, bool restartable = false)
    {
        _failed = true;
        _step = null;
        _epochInProgress = -1;
        _log.Error("training stopped: {0}", reason);
        _coordinator.Tell(new TrainingFailed(reason, restartable));
    }

    // ---- Parameter shards (--server-shards K): the server keeps control, the shards θ and the update ----

    /// <summary>
    /// How long the shards may take to sum a step the server has seen covered, to come up, or to answer a collect,
    /// before a lost message is assumed: ten step deadlines, and never under 30 s (a collect moves the model's
    /// state over the shards' links).
    /// </summary>
    private TimeSpan ShardPatience => TimeSpan.FromTicks(Math.Max(TimeSpan.FromSeconds(30).Ticks, 10 * _deadline.Current.Ticks));

    private bool FromShard(int shard)
    {
        if (_shards is not null && _shards.Is(shard, Sender))
        {
            return true;
        }
        _unauthorized++;
        _log.Warning("refused a shard message from {0}: it is not parameter shard {1}", Sender.Path, shard);
        return false;
    }

    /// <summary>
    /// Cuts θ and the optimizer state into the shards' slices and places shard s beside worker s mod N of those
    /// registered now: in this process for a local worker, else on that worker's node (its agent hosts it).
    /// </summary>
    private void PlaceShards()
    {
        ShardedState shards = _shards!;
        shards.PlacedAt = Stopwatch.GetTimestamp();
        for (int s = 0; s < shards.Plan.Shards; s++)
        {
            int start = shards.Plan.Start(s), count = shards.Plan.Count(s);
            float[] slice = _session.Parameters.AsSpan(start, count).ToArray();
            float[][] state = ShardUpdate.StateSlicesOf(_session.Optimizer, start, count);
            WorkerSlot host = _scheduler.Workers[s % _scheduler.Workers.Count];
            Address node = host.Ref.Path.Address;
            shards.Nodes[s] = node;
            if (_courier.IsLocal(node))
            {
                var update = new ShardUpdate(_session.Architecture, _session.Optimizer.Settings, _chunks, start, slice, _session.Optimizer.Steps, state);
                Context.ActorOf(ParameterShard.Props(Self, s, _chunks, update, _session.GlobalStep), $"shard-{s}");
            }
            else
            {
                IActorRef agent = ((ExtendedActorSystem)Context.System).Provider.ResolveActorRef(host.Ref.Path.Parent);
                _courier.Send(agent, new HostShard(s, shards.Plan.Shards, _session.GlobalStep, _session.Optimizer.Steps, slice, state), Self);
            }
        }
        _log.Info("placing {0} parameter shards beside {1} workers", shards.Plan.Shards, _scheduler.Workers.Count);
    }

    private void ShardUp(ShardReady m)
    {
        ShardedState? shards = _shards;
        if (shards is null || !shards.Placed || (uint)m.Shard >= (uint)shards.Plan.Shards || shards.Refs[m.Shard] is not null
            || !Sender.Path.Address.Equals(shards.Nodes[m.Shard]) || m.Step != _session.GlobalStep)
        {
            _unauthorized++;
            _log.Warning("refused {0} from {1}: no such shard was placed there", m, Sender.Path);
            return;
        }
        shards.Refs[m.Shard] = Sender;
        Context.Watch(Sender);
        if (!shards.AllReady)
        {
            return;
        }
        _log.Info("{0} parameter shards are up", shards.Plan.Shards);
        TellShardsAbout(_scheduler.Workers);
        if (_epochInProgress >= 0 && _step is null && !_failed)
        {
            StartStep();
        }
    }

    /// <summary>Tells <paramref name="workers"/> where the shards are, and the shards to send them θ's slices now.</summary>
    private void TellShardsAbout(IReadOnlyList<WorkerSlot> workers)
    {
        ShardedState shards = _shards!;
        var map = new ShardMap(shards.Refs.Select(r => _courier.Describe(r!)).ToArray());
        foreach (WorkerSlot worker in workers)
        {
            _courier.Send(worker.Ref, map, Self);
        }
        var publish = new PublishSlice([.. workers.Select(PeerOf)]);
        foreach (IActorRef? shard in shards.Refs)
        {
            _courier.Send(shard!, publish, Self);
        }
    }

    private PeerActor PeerOf(WorkerSlot worker) => worker.Peer ??= _courier.Describe(worker.Ref);

    /// <summary>The registered workers as shards are told of them; made again only when a worker joins or goes (not every step).</summary>
    private PeerActor[] WorkerPeers() => _workerPeers ??= _scheduler.Workers.Select(PeerOf).ToArray();

    private void SliceSummed(SliceReduced m)
    {
        if (_step is not { } step || m.Step != step.Step || _failed)
        {
            return;
        }
        StepTimeline.MarkShard("slice-summed", m.Step, m.Shard);
        _shards!.Reduced(m.Shard, m.Finite);
        ApplyOnShards();
    }

    /// <summary>
    /// Every part is in and every shard has summed its slice: if all sums are finite, the shards apply the step
    /// (γ from the session's schedule) and send θ's slices for the next; the server moves on at once. Waits
    /// while a collect is out, so the state collected is that of the step the server is at.
    /// </summary>
    private void ApplyOnShards()
    {
        ShardedState shards = _shards!;
        if (_step is not { } step || _failed || !_reducer.IsComplete || !shards.AllReduced || shards.Collecting)
        {
            return;
        }
        if (!shards.AllFinite)
        {
            Fail(GuardedUpdate.Describe(UpdateOutcome.GradientNotFinite, _session.GlobalStep));
            return;
        }
        long now = Stopwatch.GetTimestamp();
        _deadline.StepTook(Stopwatch.GetElapsedTime(step.DealtAt, now));
        Network.BatchResult result = _reducer.Plan().Result;
        float learningRate = _session.BeginStep();
        var apply = new ApplySlice(step.Step, step.Step + _session.StepsInUpdate, learningRate, WorkerPeers());
        foreach (IActorRef? shard in shards.Refs)
        {
            _courier.Send(shard!, apply, Self);
        }
        Applied(new UpdateApplied(step.Step, result, learningRate, now, UpdateOutcome.Applied));
    }

    /// <summary>
    /// A shard lacks parts the server has (their worker died between its slices and its report, or the shard took an
    /// overlapping speculative node first): the runs are computed again by workers that delivered this step, outside
    /// the scheduler (which counts them delivered). Every shard that has them drops the copies as duplicates, and the
    /// server drops the figures: the same bits.
    /// </summary>
    private void Repair(SliceMissing m)
    {
        if (_step is not { } step || m.Step != step.Step || _failed || m.Lo.Length != m.Hi.Length || m.Lo.Length > _chunks)
        {
            return;
        }
        WorkerSlot[] helpers = _scheduler.Workers.Where(w => !w.Suspect).ToArray();
        if (helpers.Length == 0)
        {
            helpers = [.. _scheduler.Workers];
        }
        if (helpers.Length == 0)
        {
            return; // nobody left: a worker that registers takes over the step's orphans
        }
        for (int i = 0; i < m.Lo.Length; i++)
        {
            if (m.Lo[i] < 0 || m.Hi[i] > _chunks || m.Lo[i] >= m.Hi[i])
            {
                Fail($"parameter shard {m.Shard} reported parts [{m.Lo[i]}, {m.Hi[i]}) missing; the step has {_chunks}");
                return;
            }
            WorkerSlot helper = helpers[i % helpers.Length];
            _log.Warning("parameter shard {0} lacks parts [{1}, {2}) of step {3}; {4} computes them again", m.Shard, m.Lo[i], m.Hi[i], step.Step, helper.Name);
            StepTimeline.Mark("dealt", step.Step, helper.Name);
            _courier.Send(helper.Ref, new ComputeGradients(step.Step, step.Epoch, step.StepInEpoch, m.Lo[i], m.Hi[i], []), Self);
        }
    }

    /// <summary>Gathers θ and the optimizer state from the shards into the session, then runs <paramref name="done"/>.</summary>
    private void Collect(Action done)
    {
        ShardedState shards = _shards!;
        if (!shards.AllReady)
        {
            done(); // nothing has left the session yet
            return;
        }
        var collect = new CollectSlice(shards.BeginCollect(done));
        foreach (IActorRef? shard in shards.Refs)
        {
            _courier.Send(shard!, collect, Self);
        }
    }

    private void Collected(SliceCollected m)
    {
        ShardedState shards = _shards!;
        if (_failed || !shards.IsCurrentCollect(m.Request))
        {
            return;
        }
        int count = shards.Plan.Count(m.Shard);
        int stateTensors = _session.Optimizer.StateTensors().Count();
        if (m.Step != _session.GlobalStep || m.OptimizerSteps != _session.Optimizer.Steps || m.Parameters.Length != count
            || m.State.Length != stateTensors || m.State.Any(t => t.Length != count))
        {
            Fail($"parameter shard {m.Shard} returned the state of step {m.Step} after {m.OptimizerSteps} updates ({m.Parameters.Length} parameters, {m.State.Length} state tensors); the server is at step {_session.GlobalStep} after {_session.Optimizer.Steps} updates with {count} parameters and {stateTensors} state tensors in that shard");
            return;
        }
        ShardUpdate.Gather(_session.Parameters, _session.Optimizer, shards.Plan.Start(m.Shard), m.Parameters, m.State);
        if (shards.CollectedFrom(m.Shard) is { } done)
        {
            done();
            ApplyOnShards();
        }
    }

    /// <summary>What the server knows of its parameter shards: where they are, this step's sums, the collects out.</summary>
    private sealed class ShardedState(ShardPlan plan)
    {
        private readonly bool[] _reduced = new bool[plan.Shards];
        private readonly bool[] _collected = new bool[plan.Shards];
        private readonly Queue<(long Request, Action Done)> _collects = new();
        private int _reducedCount, _collectedCount;
        private long _lastRequest;

        public ShardPlan Plan { get; } = plan;
        public bool Placed => PlacedAt is not null;
        public Address?[] Nodes { get; } = new Address?[plan.Shards];
        public IActorRef?[] Refs { get; } = new IActorRef?[plan.Shards];
        public bool AllReady => Array.TrueForAll(Refs, r => r is not null);
        public bool AllReduced => _reducedCount == Plan.Shards;
        public bool AllFinite { get; private set; } = true;
        public bool Collecting => _collects.Count > 0;

        /// <summary>When the shards were placed (null: not yet), and when the oldest collect out was sent.</summary>
        public long? PlacedAt { get; set; }
        private long _collectSentAt;

        /// <summary>What has waited longer than <paramref name="patience"/> for the shards, or null.</summary>
        public string? Overdue(TimeSpan patience)
        {
            if (PlacedAt is { } placed && !AllReady && Stopwatch.GetElapsedTime(placed) > patience)
            {
                return $"parameter shards {string.Join(", ", Enumerable.Range(0, Plan.Shards).Where(s => Refs[s] is null))} have not come up";
            }
            if (Collecting && Stopwatch.GetElapsedTime(_collectSentAt) > patience)
            {
                return $"parameter shards {string.Join(", ", Enumerable.Range(0, Plan.Shards).Where(s => !_collected[s]))} have not returned their state";
            }
            return null;
        }

        public int IndexOf(IActorRef actor) => Array.FindIndex(Refs, r => actor.Equals(r));

        /// <summary>Whether a shard that is not up yet was placed on <paramref name="node"/>.</summary>
        public bool PlacedOn(Address node) => Enumerable.Range(0, Plan.Shards).Any(s => Refs[s] is null && node.Equals(Nodes[s]));

        public bool Is(int shard, IActorRef sender) => (uint)shard < (uint)Refs.Length && sender.Equals(Refs[shard]);

        public void StartStep()
        {
            Array.Clear(_reduced);
            _reducedCount = 0;
            AllFinite = true;
        }

        public void Reduced(int shard, bool finite)
        {
            if (!_reduced[shard])
            {
                _reduced[shard] = true;
                _reducedCount++;
                AllFinite &= finite;
            }
        }

        public IEnumerable<int> NotReduced() => Enumerable.Range(0, Plan.Shards).Where(s => !_reduced[s]);

        public long BeginCollect(Action done)
        {
            if (_collects.Count == 0)
            {
                _collectSentAt = Stopwatch.GetTimestamp();
            }
            _collects.Enqueue((++_lastRequest, done));
            return _lastRequest;
        }

        /// <summary>Collects are answered in order: only the oldest one out is filled.</summary>
        public bool IsCurrentCollect(long request) => _collects.Count > 0 && _collects.Peek().Request == request;

        /// <summary>Marks a shard's answer; when it completes the collect, returns what to do next.</summary>
        public Action? CollectedFrom(int shard)
        {
            if (_collected[shard])
            {
                return null;
            }
            _collected[shard] = true;
            if (++_collectedCount < Plan.Shards)
            {
                return null;
            }
            Array.Clear(_collected);
            _collectedCount = 0;
            _collectSentAt = Stopwatch.GetTimestamp(); // the next collect out, if any, was answered in order after this one
            return _collects.Dequeue().Done;
        }
    }

    /// <summary>Timer: has the step in progress waited past its deadline?</summary>
    private sealed record CheckDeadline : INoSerializationVerificationNeeded
    {
        public static readonly CheckDeadline Instance = new();
    }

    /// <summary>The off-actor reduce + update of step <paramref name="Step"/> is done.</summary>
    private sealed record UpdateApplied(long Step, Network.BatchResult Result, float LearningRate, long Started, UpdateOutcome Outcome) : INoSerializationVerificationNeeded;

    /// <summary>A registered worker: its actor, what the scheduler keeps of it, and this epoch's figures for the report.</summary>
    private sealed class WorkerSlot(IActorRef reference, string name) : ScheduledWorker(name)
    {
        public IActorRef Ref { get; } = reference;

        /// <summary>Local mode: the compute thread it runs on, whose copy of θ it is dealt (0 elsewhere).</summary>
        public int Thread { get; init; }

        /// <summary>Its actor as shards are told of it (with parameter shards).</summary>
        public PeerActor? Peer { get; set; }
        public long StepsThisEpoch { get; set; }
        /// <summary>Steps since the worker registered (live rates are differences of this).</summary>
        public long Steps { get; set; }
        public double ComputeSeconds { get; set; }

        /// <summary>Compute seconds of each step this epoch (reset per epoch).</summary>
        public List<double> StepSeconds { get; } = [];
    }

    /// <summary>One layout of the update (<see cref="UpdateLayout"/>) and how its lanes run: with copies, lane i on worker thread i.</summary>
    private sealed record UpdateSet(GuardedUpdate Update, Action<Action<int>> ForEach);

    private sealed class StepInProgress(long step, int epoch, int stepInEpoch, float[] parameters)
    {
        public long Step { get; } = step;
        public int Epoch { get; } = epoch;
        public int StepInEpoch { get; } = stepInEpoch;
        public float[] Parameters { get; } = parameters;
        /// <summary>When its work was dealt, where its time counts from for the deadline (a round dealt ahead: then).</summary>
        public long DealtAt { get; set; } = Stopwatch.GetTimestamp();


        public long? FirstArrival { get; set; }

        /// <summary>When the server had every part (with shards, the shards' sums may still be on their way).</summary>
        public long? CoveredAt { get; set; }

        /// <summary>With shards: when the server last asked the shards that had not summed which parts they lack.</summary>
        public long? AskedMissingAt { get; set; }
        public List<(float[] Array, FloatArrayPool Pool)> Pooled { get; } = [];
    }

    private sealed class EpochCounters
    {
        public Stopwatch Clock { get; } = new();
        public double LossSum { get; private set; }
        public long Correct { get; private set; }
        public long Rows { get; private set; }
        public float LearningRate { get; private set; }
        public double WaitingForSlowest { get; set; }
        public double ServerSeconds { get; set; }
        public long Dropped { get; set; }
        /// <summary>Steps whose update kept a copy of θ per worker (<see cref="UpdateLayout"/>).</summary>
        public long StepsWithThetaCopies { get; set; }

        public void Reset()
        {
            Clock.Restart();
            LossSum = 0;
            Correct = Rows = Dropped = StepsWithThetaCopies = 0;
            WaitingForSlowest = ServerSeconds = 0;
        }

        public void Add(Network.BatchResult result, float learningRate)
        {
            LossSum += result.LossSum;
            Correct += result.Correct;
            Rows += result.Rows;
            LearningRate = learningRate;
        }
    }
}
