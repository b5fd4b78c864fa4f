using DistributedBackprop.Engine;
using DistributedBackprop.Network;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Actors;

/// <summary>
/// Marker for every message that may cross a process boundary; all of them are bound to the project's
/// binary serializer. Messages are immutable after Tell. Arrays inside them are passed by reference in
/// one process, so ownership rules are stated on each message.
/// </summary>
public interface IWireMessage;

/// <summary>
/// A worker asks the parameter server to be given work. Sender: the worker. It states what it will compute
/// with, so the server can refuse a worker that would not reproduce its bits: the protocol version, the
/// content hash of the raw training data it loaded, the network it built, and a fingerprint of the
/// floating-point results its CPU and runtime give (<see cref="NumericFingerprint"/>).
/// </summary>
public sealed record RegisterWorker(string WorkerName, int ProtocolVersion, string DataHash, string Architecture, string NumericFingerprint) : IWireMessage;

/// <summary>Parameter server → coordinator: a worker registered; <see cref="Workers"/> are now registered.</summary>
public sealed record WorkerJoined(string WorkerName, int Workers) : IWireMessage;

/// <summary>Parameter server → coordinator (same node, never serialized): a registered worker is gone, on purpose (<see cref="Graceful"/>) or not.</summary>
public sealed record WorkerLeft(string WorkerName, int Workers, bool Graceful) : Akka.Actor.INoSerializationVerificationNeeded;

/// <summary>The parameter server refuses a worker (<see cref="Reason"/> says why); the worker stops.</summary>
public sealed record WorkerRefused(string WorkerName, string Reason) : IWireMessage;

/// <summary>The parameter server's answer to <see cref="RegisterWorker"/>: work arrives from the next step on.</summary>
public sealed record WorkerAccepted(string WorkerName, long NextStep) : IWireMessage;

/// <summary>
/// Parameter server → worker: compute the gradients of chunks [ChunkLo, ChunkHi) of global step
/// <see cref="Step"/> (epoch <see cref="Epoch"/>, batch <see cref="StepInEpoch"/> of that epoch's order),
/// on exactly these parameters. The worker answers with one <see cref="GradientsComputed"/> per canonical
/// node of the range. With local steps the update is a round starting at that step and the range is one of
/// replicas (<see cref="Engine.TrainingConfig.UpdateParts"/>): each replica takes the round's steps from these parameters. <see cref="Parameters"/> is shared read-only: the server does not write it until the
/// step is complete, and the worker never writes it.
/// </summary>
public sealed record ComputeGradients(long Step, int Epoch, int StepInEpoch, int ChunkLo, int ChunkHi, float[] Parameters) : IWireMessage
{
    /// <summary>
    /// With <c>--outer-overlap</c>: <see cref="Engine.RoundStart.MinusOwnChange"/> when the work was dealt ahead,
    /// before the previous round was in (its replicas start from <see cref="Parameters"/>, θ_{i−1}, and the worker's
    /// own values of that round); else every replica starts from <see cref="Parameters"/>. Work dealt ahead at an
    /// epoch's first round has no <see cref="Parameters"/>: θ_{i−1} is then what the worker's work of that round
    /// carried, sent to it just before on the same road.
    /// </summary>
    public Engine.RoundStart Start { get; init; }

    /// <summary>Set by the bulk channel when <see cref="Parameters"/> came from its pool: the worker returns it after the step (with --outer-overlap, θ of an epoch's first round once a later epoch's replaces it). Not sent.</summary>
    public Transport.FloatArrayPool? Pool { get; init; }
}

/// <summary>
/// Worker → parameter server: the gradient of one canonical node of a step's chunk tree, with the node's
/// loss sum, correct predictions and rows (with local steps: the tree sum of the node's replicas' changes
/// (θ − θ_r)/R, with their figures over the round's steps). Ownership of <see cref="Gradient"/> passes to the server, which
/// may add into it while reducing; it returns to the worker implicitly two steps of work later (the server
/// has finished with it before it deals work beyond the next update: with --outer-overlap it deals one update ahead).
/// </summary>
public sealed record GradientsComputed(long Step, TreeNode Node, BatchResult Result, float[] Gradient, double ComputeSeconds) : IWireMessage
{
    /// <summary>With local steps: the figures of each replica the node covers, in order (reported per round); else empty.</summary>
    public BatchResult[] PartResults { get; init; } = [];

    /// <summary>Set by the bulk channel when <see cref="Gradient"/> came from its pool: the server returns it once the step is applied. Not sent.</summary>
    public Transport.FloatArrayPool? Pool { get; init; }

    /// <summary>
    /// The largest magnitude in <see cref="Gradient"/> (<see cref="Kernels.FiniteValues.Bound"/>), as a worker in the
    /// server's own process computed it; +∞ (no bound) otherwise. Not sent: a peer's gradient is bounded by the server.
    /// </summary>
    public float Bound { get; init; } = float.PositiveInfinity;
}

/// <summary>
/// Coordinator → parameter server: run every step of this epoch, then report <see cref="EpochTrained"/>,
/// with a copy of the parameters if <see cref="ReturnParameters"/> (for evaluation).
/// </summary>
public sealed record TrainEpoch(int Epoch, bool ReturnParameters = true) : IWireMessage;

/// <summary>Parameter server → coordinator after each applied update (with local steps, a round: <see cref="Round"/> holds its figures).</summary>
public sealed record StepApplied(long GlobalStep, int Epoch, int StepInEpoch, BatchResult Result, int Workers) : IWireMessage
{
    public RoundReport? Round { get; init; }
}

/// <summary>
/// Parameter server → coordinator when an epoch's steps are applied: totals, timing (time waiting for the
/// slowest worker, time in reduce + update + broadcast), per-worker steps/s, the fraction of the epoch
/// each worker spent computing, and the distribution of each worker's compute time per step (median, 90th
/// percentile: a slow or straggling worker shows here). <see cref="Parameters"/> is a copy the coordinator owns (empty unless asked for).
/// </summary>
public sealed record EpochTrained(
    int Epoch,
    long GlobalStep,
    double LossSum,
    long Correct,
    long Rows,
    float LearningRate,
    double Seconds,
    double WaitingForSlowestSeconds,
    double ServerSeconds,
    long DroppedGradients,
    int Workers,
    long StepsWithThetaCopies,
    IReadOnlyDictionary<string, double> WorkerStepsPerSecond,
    IReadOnlyDictionary<string, double> WorkerBusyFraction,
    IReadOnlyDictionary<string, double> WorkerStepSecondsMedian,
    IReadOnlyDictionary<string, double> WorkerStepSecondsP90,
    float[] Parameters) : IWireMessage;

/// <summary>
/// Parameter server → coordinator: training cannot continue; the last good parameters are kept.
/// <see cref="Restartable"/>: state was lost with a node (a parameter shard's), not spoiled — the server process
/// ends as if it had died, the workers wait for it, and a restart resumes from the checkpoint with the same bits.
/// </summary>
public sealed record TrainingFailed(string Reason, bool Restartable = false) : IWireMessage;

/// <summary>Coordinator → parameter server: write a checkpoint of the current state; answered by <see cref="CheckpointSaved"/>.</summary>
public sealed record SaveCheckpoint(string Path) : IWireMessage;

public sealed record CheckpointSaved(string Path, long GlobalStep) : IWireMessage;

/// <summary>Anyone in the server's process → parameter server: report counters (answered with <see cref="ServerStatistics"/>).</summary>
public sealed record GetStatistics : IWireMessage
{
    public static readonly GetStatistics Instance = new();
}

/// <summary>Counters of a parameter server, for tests and monitoring; <see cref="Unauthorized"/> counts messages refused for their sender, <see cref="Speculations"/> the times a step's missing chunks were dealt again after its deadline.</summary>
public sealed record ServerStatistics(long GlobalStep, int Workers, long StaleDropped, long DuplicatesDropped, long UnregisteredIgnored, long Reassignments, long Unauthorized, long Speculations, bool Failed) : IWireMessage;

/// <summary>
/// Local, server's process → parameter server: how many steps has each registered worker computed (answered
/// with <see cref="WorkerStepCounts"/>)? Polled once a second for live per-worker rates. Never serialized.
/// </summary>
public sealed record GetWorkerStepCounts : Akka.Actor.INoSerializationVerificationNeeded
{
    public static readonly GetWorkerStepCounts Instance = new();
}

/// <summary>Each registered worker's steps since it registered (worker name → steps it delivered a gradient to).</summary>
public sealed record WorkerStepCounts(IReadOnlyDictionary<string, long> Steps) : Akka.Actor.INoSerializationVerificationNeeded;

/// <summary>
/// Local, server node: the cluster member at <see cref="Node"/> is leaving on purpose (a graceful stop), so
/// its workers go at once, as a leave, not a death. Never serialized: it cannot come from the network.
/// </summary>
public sealed record NodeLeaving(Akka.Actor.Address Node) : Akka.Actor.INoSerializationVerificationNeeded;

/// <summary>
/// Local: the bulk channel could not deliver <see cref="Message"/> to <see cref="Recipient"/> (sent to the
/// message's sender, which decides what a lost message means for the protocol).
/// </summary>
public sealed record DeliveryFailed(Akka.Actor.IActorRef Recipient, object Message, string Reason) : Akka.Actor.INoSerializationVerificationNeeded;

/// <summary>An actor and where its node's bulk channel listens ("" for an actor in the sender's process or when unknown).</summary>
public sealed record PeerActor(string Path, string Endpoint);

/// <summary>
/// Parameter server → a worker node's agent (or, on one node, the server itself): host parameter shard
/// <see cref="Shard"/> of <see cref="Shards"/>, whose slice of θ and of each optimizer state tensor (in the
/// optimizer's order) these are, at global step <see cref="Step"/> after <see cref="OptimizerSteps"/> updates.
/// </summary>
public sealed record HostShard(int Shard, int Shards, long Step, long OptimizerSteps, float[] Parameters, float[][] State) : IWireMessage;

/// <summary>Parameter shard → parameter server: the shard is up; the sender is its actor.</summary>
public sealed record ShardReady(int Shard, long Step) : IWireMessage;

/// <summary>Parameter server → worker: where the parameter shards are, in shard order; θ comes from them, gradient slices go to them.</summary>
public sealed record ShardMap(IReadOnlyList<PeerActor> Shards) : IWireMessage;

/// <summary>
/// Worker → parameter shard: one piece of the shard's slice of one canonical node's gradient at step <see cref="Step"/>,
/// starting at <see cref="Offset"/> of the slice (a piece of <see cref="Engine.ShardUpdate.Pieces"/>: sent as soon as
/// the backward pass has finished it). Ownership passes to the shard (it adds into it) until the step is applied.
/// </summary>
public sealed record GradientSlice(long Step, TreeNode Node, int Offset, float[] Values) : IWireMessage
{
    /// <summary>Set by the bulk channel when <see cref="Values"/> came from its pool: the shard returns it after the step. Not sent.</summary>
    public Transport.FloatArrayPool? Pool { get; init; }
}

/// <summary>Parameter shard → parameter server: every part of step <see cref="Step"/> is in and summed; <see cref="Finite"/> says whether the sum is.</summary>
public sealed record SliceReduced(long Step, int Shard, bool Finite) : IWireMessage;

/// <summary>
/// Parameter server → parameter shard, once every shard's sum of step <see cref="Step"/> is finite: apply it with γ =
/// <see cref="LearningRate"/>, then send θ's slice for step <see cref="NextStep"/> to <see cref="Workers"/>, the
/// registered workers (the only ones whose gradient slices the shard takes from now on).
/// </summary>
public sealed record ApplySlice(long Step, long NextStep, float LearningRate, IReadOnlyList<PeerActor> Workers) : IWireMessage;

/// <summary>Parameter shard → parameter server: step <see cref="Step"/> is applied; <see cref="Finite"/> is false if the update overflowed.</summary>
public sealed record SliceApplied(long Step, int Shard, bool Finite) : IWireMessage;

/// <summary>
/// Parameter shard → worker: one piece of the shard's slice of θ for step <see cref="Step"/>, starting at
/// <see cref="Offset"/> of the slice (a piece of <see cref="Engine.ShardPlan.ParameterPieces"/>, sent in its order so
/// the worker's forward pass can start on the first while the rest travel). Read-only; the worker copies it.
/// </summary>
public sealed record ParameterSlice(long Step, int Shard, int Offset, float[] Values) : IWireMessage
{
    /// <summary>Set by the bulk channel when <see cref="Values"/> came from its pool: the worker returns it after copying. Not sent.</summary>
    public Transport.FloatArrayPool? Pool { get; init; }
}

/// <summary>Parameter server → parameter shard: send θ's slice as it is now to these workers (newcomers), and take their gradient slices.</summary>
public sealed record PublishSlice(IReadOnlyList<PeerActor> Workers) : IWireMessage;

/// <summary>Parameter server → parameter shard: send back the slice of θ and of the optimizer state (to checkpoint or evaluate).</summary>
public sealed record CollectSlice(long Request) : IWireMessage;

/// <summary>Parameter shard → parameter server: its state at global step <see cref="Step"/>, for <see cref="CollectSlice"/> <see cref="Request"/>.</summary>
public sealed record SliceCollected(long Request, int Shard, long Step, long OptimizerSteps, float[] Parameters, float[][] State) : IWireMessage;

/// <summary>
/// Parameter server → parameter shard: every part of step <see cref="Step"/> reached the server a deadline ago,
/// yet the shard has not summed it; which parts does it lack? Answered by <see cref="SliceMissing"/>.
/// </summary>
public sealed record AskMissing(long Step) : IWireMessage;

/// <summary>
/// Parameter shard → parameter server: the runs of parts [Lo[i], Hi[i]) of step <see cref="Step"/> whose
/// gradient slices never reached the shard (their worker died between its slices and its report, or the
/// shard took a speculative node that overlapped them). The server has them computed again.
/// </summary>
public sealed record SliceMissing(long Step, int Shard, int[] Lo, int[] Hi) : IWireMessage;

/// <summary>Parameter shard → parameter server: a worker sent something that cannot be part of the run (<see cref="Reason"/>); training stops.</summary>
public sealed record ShardFailed(int Shard, string Reason) : IWireMessage;
