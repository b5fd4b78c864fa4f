using System.Globalization;
using System.Numerics.Tensors;
using System.Text.Json.Serialization;
using DistributedBackprop.Data;
using DistributedBackprop.Network;
using DistributedBackprop.Optimizers;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Engine;

/// <summary>The outer optimizer of a round of local steps: plain averaging's step, or DiLoCo's Nesterov momentum.</summary>
public enum OuterOptimizerKind
{
    /// <summary>θ ← θ − γ_out Δ̄ with Nesterov momentum μ_out (DiLoCo, Douillard et al. 2023: γ_out 0.7, μ_out 0.9).</summary>
    Nesterov,

    /// <summary>θ ← θ − γ_out Δ̄ (γ_out = 1: model averaging, i.e. local SGD, Stich 2019).</summary>
    Sgd,
}

/// <summary>
/// Local steps with replicas (DiLoCo-style): R model replicas each take H inner steps from the same θ, each on
/// its own fixed share of every global batch; the server then averages their parameter changes
/// Δ̄ = 1/R Σ_r (θ − θ_r) along the fixed tree over the R replicas and applies the outer optimizer to Δ̄ as if
/// it were a gradient. Such a round is one update: workers and the server exchange θ and Δ once per H steps.
/// R and H are part of the model's definition, like the chunks; the number of machines is not.
/// </summary>
public sealed record LocalStepsSettings
{
    public const float DefaultOuterLearningRate = 0.7f;
    public const float DefaultOuterMomentum = 0.9f;

    public int Replicas { get; init; } = 1;

    /// <summary>H: inner steps per round (a round never crosses an epoch's end: the last one of an epoch may be shorter).</summary>
    public int Steps { get; init; } = 1;

    public OuterOptimizerKind OuterOptimizer { get; init; } = OuterOptimizerKind.Nesterov;
    public float OuterLearningRate { get; init; } = DefaultOuterLearningRate;
    public float OuterMomentum { get; init; } = DefaultOuterMomentum;

    /// <summary>
    /// Rounds overlapped with the exchange, stale by one round (<c>--outer-overlap</c>; <see cref="RoundStart"/>):
    /// written into the JSON only when set, so runs without it keep their bytes.
    /// </summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public bool OuterOverlap { get; init; }

    /// <summary>The outer update as an <see cref="Optimizer"/> (the same code as the inner one; Δ̄ takes the gradient's place).</summary>
    public OptimizerSettings OuterSettings() => new()
    {
        Kind = OuterOptimizer == OuterOptimizerKind.Sgd ? OptimizerKind.Sgd : OptimizerKind.Momentum,
        Nesterov = OuterOptimizer == OuterOptimizerKind.Nesterov,
        LearningRate = OuterLearningRate,
        Momentum = OuterOptimizer == OuterOptimizerKind.Nesterov ? OuterMomentum : 0.9f,
    };

    public static string Name(OuterOptimizerKind kind) => kind.ToString().ToLowerInvariant();

    /// <summary>The first problem, as "--option: reason", or null.</summary>
    public string? Validate(int batchSize)
    {
        if (Replicas < 2 || Replicas > TrainingConfig.MaxUpdateParts) return $"--replicas: local steps need between 2 and {TrainingConfig.MaxUpdateParts} replicas, got {Replicas} (1: synchronous training)";
        if (Replicas > batchSize) return $"--replicas: {Replicas} replicas share each batch of {batchSize} rows; at most one replica per row";
        if (Steps < 2 || Steps > 1_000_000) return $"--local-steps: local steps need between 2 and 1000000 steps per round, got {Steps} (1: synchronous training)";
        if (!(OuterLearningRate > 0) || !float.IsFinite(OuterLearningRate))
            return string.Create(CultureInfo.InvariantCulture, $"--outer-lr: must be a positive number, got {OuterLearningRate}");
        if (!(OuterMomentum >= 0 && OuterMomentum < 1))
            return string.Create(CultureInfo.InvariantCulture, $"--outer-momentum: must be in [0, 1), got {OuterMomentum}");
        return null;
    }
}

/// <summary>
/// Where a replica starts its round. Without <c>--outer-overlap</c> every replica starts from θ_i, the θ the
/// round is dealt with. With it (stale by one round, "eager" in the sense of Kale et al. 2025, "Eager updates
/// for overlapped communication and computation in DiLoCo") replica r starts round i ≥ 1 of an epoch from
///   S_i^r = θ_{i−1} − R·ℓ_{i−1}^r,
/// where θ_{i−1} is θ before the previous round's outer step and ℓ_{i−1}^r = (S_{i−1}^r − E_{i−1}^r)/R is the
/// replica's own value in that round (E: where its inner steps ended): its own trajectory, moved by how θ moved
/// from one outer step to the next (S_0^r = θ_0 at an epoch's start). The outer step is unchanged,
/// θ_{i+1} = outer(θ_i, Σ_r ℓ_i^r). A worker can therefore start round i as soon as it has finished round i − 1,
/// with θ_{i−1} sent while that round ran: round i − 1's changes travel and are averaged meanwhile. With
/// R = 1 and plain averaging (γ_out = 1) S_i = θ_i: plain training. Starts depend only on the round's place in
/// its epoch and on values, never on timing, so the model stays a pure function of (data, config, seed); an
/// epoch ends drained, so a checkpoint at an epoch's end holds all the state there is.
/// (A plain one-round delay, every replica from θ_{i−1}, diverged with DiLoCo's outer Nesterov: docs/architecture.md.)
/// </summary>
public enum RoundStart
{
    /// <summary>Every replica of the work starts from the θ it carries.</summary>
    FromParameters,

    /// <summary>Replica r starts from θ_{i−1} − R·ℓ_{i−1}^r: the θ the work carries and the computer's own ℓ_{i−1}^r.</summary>
    MinusOwnChange,
}

/// <summary>
/// The θ each round of an epoch is dealt with under <c>--outer-overlap</c>: θ_{i−1} for round i ≥ 1, θ_0 for
/// round 0. Round i's is needed until update i is applied (it may be dealt again). Each is a new array (rounds 0
/// and 1 share θ_0's), never written after it is kept: in one process a worker may still be reading an older
/// round's base for a duplicate whose answer is dropped, but whose value it keeps to start its next round from.
/// </summary>
public sealed class OverlappedRoundBases
{
    private readonly float[][] _bases = [[], []];

    /// <summary>
    /// Round <paramref name="round"/> (its number in the epoch) begins; <paramref name="theta"/> holds θ_round,
    /// before its outer step. Returns the round's base; with <paramref name="hasNext"/> θ_round is kept as the
    /// next round's (<see cref="BaseOf"/>).
    /// </summary>
    public float[] Begin(int round, ReadOnlySpan<float> theta, bool hasNext)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(round);
        if (round == 0)
        {
            _bases[0] = Copy(theta);
        }
        if (hasNext)
        {
            // Round 0's base and round 1's are both θ_0: one array serves both (bases are never written).
            _bases[(round + 1) % 2] = round == 0 ? _bases[0] : Copy(theta);
        }
        return _bases[round % 2];
    }

    /// <summary>
    /// A new array holding θ, on the pinned object heap. A model-sized array on the large object heap comes back
    /// from the GC as fresh pages each time, and on this project's VM a page fault costs ~19 µs: ~4.5 ms per copy
    /// of 0.94 MB, once per round, on the server's thread before it deals the next round. The pinned heap reuses
    /// the space of bases already collected (`dbp train --workers 2 --replicas 2 --local-steps 32 --outer-overlap`,
    /// 5 epochs on Fashion-MNIST: ~7,000 page faults more than with H = 128 before, none after).
    /// </summary>
    private static float[] Copy(ReadOnlySpan<float> theta)
    {
        float[] copy = GC.AllocateUninitializedArray<float>(theta.Length, pinned: true);
        theta.CopyTo(copy);
        return copy;
    }

    /// <summary>The base of <paramref name="round"/>, kept by the <see cref="Begin"/> of this round or of the one before.</summary>
    public float[] BaseOf(int round) => _bases[round % 2];
}

/// <summary>
/// Each replica's value ℓ^r of its last two rounds (keyed by the round's first global step), for
/// <see cref="RoundStart.MinusOwnChange"/>: a computer keeps those it computed; the parameter server keeps every
/// replica's, to deal a replica's round to another worker. Two generations, because round i's value is kept
/// while round i − 1's may still be needed (a duplicate of round i computed again).
/// </summary>
/// <param name="steps">H: rounds start at multiples of H within an epoch, so the round before one that begins at
/// step s (not an epoch's first) began at s − H.</param>
public sealed class ReplicaChanges(int replicas, int steps, int parameterCount)
{
    private readonly float[]?[] _values = new float[]?[2 * replicas];
    private readonly long[] _steps = Enumerable.Repeat(-1L, 2 * replicas).ToArray();

    /// <summary>Replica <paramref name="replica"/>'s value in the round that began at <paramref name="roundStep"/>, if kept.</summary>
    public bool TryGet(int replica, long roundStep, out float[] value)
    {
        for (int g = 0; g < 2; g++)
        {
            if (_steps[2 * replica + g] == roundStep)
            {
                value = _values[2 * replica + g]!;
                return true;
            }
        }
        value = [];
        return false;
    }

    /// <summary>Replica <paramref name="replica"/>'s value in the round before the one that begins at <paramref name="roundStep"/>, if kept.</summary>
    public bool TryGetPrevious(int replica, long roundStep, out float[] value) => TryGet(replica, PreviousRound(roundStep), out value);

    /// <summary>The first step of the round before the one that begins at <paramref name="roundStep"/> (not an epoch's first).</summary>
    public long PreviousRound(long roundStep) => roundStep - steps;

    /// <summary>Keeps a copy of <paramref name="value"/>, over the older of the replica's two generations (or the same round's).</summary>
    public void Keep(int replica, long roundStep, ReadOnlySpan<float> value)
    {
        int a = 2 * replica, b = a + 1;
        int slot = _steps[a] == roundStep ? a : _steps[b] == roundStep ? b : _steps[a] <= _steps[b] ? a : b;
        value.CopyTo(_values[slot] ??= new float[parameterCount]);
        _steps[slot] = roundStep;
    }

    /// <summary>S^r = θ_{i−1} − R·ℓ_{i−1}^r (<see cref="RoundStart.MinusOwnChange"/>), into <paramref name="start"/>.</summary>
    public static void StartOf(ReadOnlySpan<float> theta, ReadOnlySpan<float> change, int replicas, Span<float> start)
    {
        TensorPrimitives.Multiply(change, (float)replicas, start);
        TensorPrimitives.Subtract(theta, start, start);
    }
}

/// <summary>
/// What one part of an update computes, for whoever computes it (a trainer lane, a worker actor): the value of
/// one canonical node of the tree over the update's parts, to be reduced along that tree. The parts are the
/// C chunks of a step's batch (the node's gradient), or with local steps the R replicas of a round (the node's
/// share of the averaged parameter change).
/// </summary>
public interface IUpdatePartComputer
{
    /// <param name="parameters">θ at the start of the update; read only.</param>
    /// <param name="plan">the epoch's order.</param>
    /// <param name="stepInEpoch">the update's first step in the epoch.</param>
    /// <param name="node">a canonical node of the tree over the update's parts.</param>
    /// <param name="result">receives the node's value (as long as the parameters).</param>
    /// <param name="partResults">with local steps, receives each of the node's replicas' own figures (index 0: the
    /// node's first replica) unless empty; chunks leave it alone (their per-chunk figures are not reported).</param>
    /// <param name="start">with local steps and <c>--outer-overlap</c>, where the node's replicas start (<see cref="RoundStart"/>).</param>
    /// <param name="release">if given, told each part of <paramref name="result"/> as soon as it is final (a chunk's
    /// gradient, layer by layer); a round's value is final only at its end, so it is never told.</param>
    BatchResult Compute(float[] parameters, EpochPlan plan, int stepInEpoch, TreeNode node, float[] result, BatchResult[] partResults, RoundStart start = RoundStart.FromParameters, IGradientRelease? release = null);
}

/// <summary>The parts of one update: their count and who computes them, from the configuration alone.</summary>
public static class UpdateParts
{
    /// <summary>A computer of this configuration's parts (one per thread: it keeps workspace).</summary>
    /// <param name="changes">with <c>--outer-overlap</c>, where computers keep and find their replicas' values (shared by the computers of one process's lanes).</param>
    public static IUpdatePartComputer CreateComputer(TrainingConfig config, Architecture architecture, Dataset train, ReplicaChanges? changes = null) =>
        config.LocalSteps is null
            ? new ChunkGradientComputer(new NodeGradientComputer(architecture, train), config.Chunks)
            : new ReplicaRoundComputer(config, architecture, train, changes);

    /// <summary>With <c>--outer-overlap</c> a store for the replicas' values (<see cref="RoundStart.MinusOwnChange"/>); else null.</summary>
    public static ReplicaChanges? CreateChanges(TrainingConfig config, int parameterCount) =>
        config.LocalSteps is { OuterOverlap: true } local ? new ReplicaChanges(local.Replicas, local.Steps, parameterCount) : null;

    /// <summary>
    /// How many per-part figures a node's value carries: with local steps one per replica it covers (the round's
    /// per-replica losses), else none (a chunk's own figures are not reported).
    /// </summary>
    public static int FiguresPerNode(TrainingConfig config, TreeNode node) =>
        config.LocalSteps is null ? 0 : ChunkTree.CoveredChunks(node, config.UpdateParts());
}

/// <summary>A synchronous step's part: the gradient of a node of its chunk tree.</summary>
public sealed class ChunkGradientComputer(NodeGradientComputer gradients, int chunks) : IUpdatePartComputer, IForwardAhead
{
    /// <summary>The node whose forward pass runs ahead (<see cref="BeginForward"/>), if any.</summary>
    private (int Epoch, int StepInEpoch, TreeNode Node)? _ahead;

    public BatchResult Compute(float[] parameters, EpochPlan plan, int stepInEpoch, TreeNode node, float[] result, BatchResult[] partResults, RoundStart start = RoundStart.FromParameters, IGradientRelease? release = null)
    {
        if (_ahead != (plan.Epoch, stepInEpoch, node))
        {
            gradients.Begin(plan.BatchRows(stepInEpoch), chunks, node);
        }
        _ahead = null;
        return gradients.Finish(parameters, result, release);
    }

    public void BeginForward(EpochPlan plan, int stepInEpoch, TreeNode node)
    {
        gradients.Begin(plan.BatchRows(stepInEpoch), chunks, node);
        _ahead = (plan.Epoch, stepInEpoch, node);
    }

    public bool AdvanceForward(float[] parameters, IParameterPresence present) =>
        _ahead is not null && gradients.AdvanceForward(parameters, present);

    public void Abandon() => _ahead = null;
}

/// <summary>
/// A computer that can run a node's forward pass ahead of its θ, block by block as the parameters arrive from the
/// shards (issue 9's overlap on θ's way back). <see cref="IUpdatePartComputer.Compute"/> of that node then finishes
/// it; of any other node it starts afresh. A round of local steps has no such start: its replicas' first forward
/// passes are the only ones on θ itself.
/// </summary>
public interface IForwardAhead
{
    /// <summary>Gathers the node's rows and starts its forward pass (any node begun before is dropped).</summary>
    void BeginForward(EpochPlan plan, int stepInEpoch, TreeNode node);

    /// <summary>Runs the begun forward pass as far as <paramref name="present"/> allows; true once complete, false also if nothing was begun.</summary>
    /// <param name="parameters">θ of the step where <paramref name="present"/> says so; the node's Compute must get the same values.</param>
    bool AdvanceForward(float[] parameters, IParameterPresence present);

    /// <summary>The begun node is not to be finished: its next Compute, even of the same step and node, starts afresh.</summary>
    void Abandon();
}

/// <summary>
/// A round's part: replicas [node) each copy θ, take the round's inner steps with a fresh inner optimizer on
/// their share of each batch (replica r: rows [⌊r·n/R⌋, ⌊(r+1)·n/R⌋) of the step's n rows, a pure function of
/// seed, epoch, step and r), and give Δ_r / R = (θ − θ_r) / R; the node's value is the tree sum of its
/// replicas' values, added in the same order as <see cref="TreeReducer"/> adds nodes, so where a replica runs
/// does not change a bit. The inner optimizer starts afresh every round (momentum or Adam's moments at 0):
/// replica state that outlived a round would have to travel with the replica when a worker dies, doubling or
/// tripling the bytes of every round to keep the model a function of (data, config, seed).
/// Each inner step's γ is the inner schedule's at that global step.
/// </summary>
public sealed class ReplicaRoundComputer : IUpdatePartComputer
{
    private readonly TrainingConfig _config;
    private readonly int _replicas;
    private readonly NodeGradientComputer _gradients;
    private readonly Optimizer _inner;
    private readonly float[] _replica, _gradient;
    private readonly List<float[]> _scratch = [];
    private readonly int _stepsPerEpoch;
    private readonly int _parameterCount;

    private readonly ReplicaChanges? _changes;
    private readonly float[] _start;

    public ReplicaRoundComputer(TrainingConfig config, Architecture architecture, Dataset train, ReplicaChanges? changes = null)
    {
        _changes = changes;
        _start = changes is null ? [] : new float[architecture.ParameterCount];
        _config = config;
        _replicas = config.LocalSteps?.Replicas ?? throw new ArgumentException("the configuration has no local steps");
        _gradients = new NodeGradientComputer(architecture, train);
        _inner = new Optimizer(architecture, config.Optimizer);
        _parameterCount = architecture.ParameterCount;
        _replica = new float[_parameterCount];
        _gradient = new float[_parameterCount];
        _stepsPerEpoch = EpochPlan.StepsPerEpoch(train.Rows, config.BatchSize);
        _runLeaf = RunLeaf;
        _addRight = AddRight;
    }

    private readonly ChunkTree.KnownValue<(float[] Values, BatchResult Result)> _runLeaf;
    private readonly Func<(float[] Values, BatchResult Result), (float[] Values, BatchResult Result), (float[] Values, BatchResult Result)> _addRight;

    public BatchResult Compute(float[] parameters, EpochPlan plan, int stepInEpoch, TreeNode node, float[] result, BatchResult[] partResults, RoundStart start = RoundStart.FromParameters, IGradientRelease? release = null)
    {
        if (start == RoundStart.MinusOwnChange && (_changes is null || stepInEpoch == 0))
        {
            throw new ArgumentException(_changes is null ? "a start from the replicas' own changes needs --outer-overlap" : "an epoch's first round starts from θ");
        }
        if (!ChunkTree.IsCanonical(node, _replicas))
        {
            throw new ArgumentException($"{node} is not a node of the tree over {_replicas} replicas");
        }
        if (parameters.Length != _parameterCount || result.Length != _parameterCount)
        {
            throw new ArgumentException($"expected {_parameterCount} parameters and results, got {parameters.Length} and {result.Length}");
        }
        if (partResults.Length != 0 && partResults.Length < ChunkTree.CoveredChunks(node, _replicas))
        {
            throw new ArgumentException($"{node} covers {ChunkTree.CoveredChunks(node, _replicas)} replicas; {partResults.Length} part results do not hold them");
        }
        (_parameters, _plan, _stepInEpoch, _result, _buffersInUse, _partResults, _firstReplica, _startMode) = (parameters, plan, stepInEpoch, result, 0, partResults, node.Lo, start);
        return ChunkTree.Fold(node, _replicas, _runLeaf, _addRight).Result;
    }

    // The fold computes the left subtree before the right one, so the buffers in use form a stack: a leaf
    // takes the next (the first is the caller's result), and adding a right subtree into its left frees it.
    private float[] _parameters = [], _result = [];
    private EpochPlan? _plan;
    private int _stepInEpoch, _buffersInUse, _firstReplica;
    private BatchResult[] _partResults = [];
    private RoundStart _startMode;

    private bool RunLeaf(TreeNode node, out (float[] Values, BatchResult Result) value)
    {
        if (node.Size != 1)
        {
            value = default;
            return false;
        }
        float[] buffer = _buffersInUse == 0 ? _result : Scratch(_buffersInUse - 1);
        _buffersInUse++;
        value = (buffer, RunReplica(_parameters, _plan!, _stepInEpoch, node.Lo, buffer, _startMode));
        if (_partResults.Length != 0)
        {
            _partResults[node.Lo - _firstReplica] = value.Result;
        }
        return true;
    }

    private (float[] Values, BatchResult Result) AddRight((float[] Values, BatchResult Result) left, (float[] Values, BatchResult Result) right)
    {
        TensorPrimitives.Add(left.Values, right.Values, left.Values);
        _buffersInUse--;
        return (left.Values, TreeReducer.Combine(left.Result, right.Result));
    }

    private BatchResult RunReplica(float[] parameters, EpochPlan plan, int stepInEpoch, int replica, Span<float> into, RoundStart mode)
    {
        long roundStep = (long)plan.Epoch * _stepsPerEpoch + stepInEpoch;
        if (mode == RoundStart.MinusOwnChange)
        {
            if (!_changes!.TryGetPrevious(replica, roundStep, out float[] change))
            {
                throw new InvalidOperationException($"replica {replica} has no value of the round before step {roundStep} here to start that round from");
            }
            ReplicaChanges.StartOf(parameters, change, _replicas, _start);
            parameters = _start;
        }
        parameters.CopyTo(_replica);
        _inner.Reset();
        int steps = _config.StepsInUpdate(stepInEpoch, _stepsPerEpoch);
        long totalSteps = (long)_stepsPerEpoch * _config.Epochs;
        double lossSum = 0;
        int correct = 0, rows = 0;
        for (int j = 0; j < steps; j++)
        {
            ReadOnlySpan<int> batch = plan.BatchRows(stepInEpoch + j);
            int lo = ChunkTree.ChunkStart(batch.Length, _replicas, replica), hi = ChunkTree.ChunkStart(batch.Length, _replicas, replica + 1);
            if (hi == lo)
            {
                // A short last batch may leave a replica without rows: it skips the step.
                continue;
            }
            BatchResult step = _gradients.Compute(_replica, batch[lo..hi], 1, new TreeNode(0, 1), _gradient);
            lossSum += step.LossSum;
            correct += step.Correct;
            rows += step.Rows;
            long globalStep = (long)plan.Epoch * _stepsPerEpoch + stepInEpoch + j;
            float learningRate = _config.Optimizer.LearningRateAt(globalStep, plan.Epoch, totalSteps);
            _inner.BeginStep();
            _inner.ApplyRange(_replica, _gradient, learningRate, 0, _parameterCount);
        }
        // Δ_r / R: the tree sum of these over all replicas is the mean change Δ̄ the outer optimizer applies.
        TensorPrimitives.Subtract(parameters, _replica, into);
        TensorPrimitives.Divide(into, (float)_replicas, into);
        // Kept before the tree adds another replica's value into this buffer.
        _changes?.Keep(replica, roundStep, into);
        return new BatchResult(lossSum, correct, rows);
    }

    private float[] Scratch(int index)
    {
        while (_scratch.Count <= index)
        {
            _scratch.Add(new float[_parameterCount]);
        }
        return _scratch[index];
    }
}
