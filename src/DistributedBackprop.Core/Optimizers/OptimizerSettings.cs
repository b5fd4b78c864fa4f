using DistributedBackprop.Kernels;
namespace DistributedBackprop.Optimizers;

public enum OptimizerKind
{
    /// <summary>The lecture's update: w ← w − γ ∂J/∂w.</summary>
    Sgd,
    /// <summary>Heavy-ball momentum (Polyak 1964), optionally Nesterov (Sutskever et al. 2013).</summary>
    Momentum,
    /// <summary>Adam (Kingma &amp; Ba 2015) with decoupled weight decay (AdamW, Loshchilov &amp; Hutter 2019).</summary>
    Adam,
}

/// <summary>How the learning rate γ moves over training.</summary>
public enum ScheduleKind
{
    Constant,
    /// <summary>γ · decay^⌊epoch / every⌋.</summary>
    Step,
    /// <summary>Cosine annealing to MinLearningRate over all steps (Loshchilov &amp; Hutter 2017, without restarts).</summary>
    Cosine,
}

/// <summary>
/// Optimizer and schedule settings. Weight decay applies to weights only, never to biases: for sgd and
/// momentum as the L2 term g + λw, for adam decoupled (w ← w − γλw).
/// </summary>
public sealed record OptimizerSettings
{
    public OptimizerKind Kind { get; init; } = OptimizerKind.Sgd;
    public float LearningRate { get; init; } = 0.1f;
    public float Momentum { get; init; } = 0.9f;
    public bool Nesterov { get; init; }
    public float Beta1 { get; init; } = 0.9f;
    public float Beta2 { get; init; } = 0.999f;
    public float Epsilon { get; init; } = 1e-8f;
    public float WeightDecay { get; init; }
    public ScheduleKind Schedule { get; init; } = ScheduleKind.Constant;
    /// <summary>Step schedule: decay every this many epochs.</summary>
    public int DecayEvery { get; init; } = 10;
    /// <summary>Step schedule: multiply γ by this at each decay.</summary>
    public float DecayFactor { get; init; } = 0.1f;
    /// <summary>Cosine schedule: γ at the last step.</summary>
    public float MinLearningRate { get; init; }
    /// <summary>Linear warm-up from γ/WarmupSteps to γ over the first steps (0 = none).</summary>
    public int WarmupSteps { get; init; }

    public static string Name(OptimizerKind kind) => kind.ToString().ToLowerInvariant();
    public static string Name(ScheduleKind kind) => kind.ToString().ToLowerInvariant();

    public static bool TryParse(string text, out OptimizerKind kind) => Enum.TryParse(text.Trim(), ignoreCase: true, out kind) && Enum.IsDefined(kind);
    public static bool TryParse(string text, out ScheduleKind kind) => Enum.TryParse(text.Trim(), ignoreCase: true, out kind) && Enum.IsDefined(kind);

    /// <summary>Validates ranges; returns the first problem as "option: reason", or null.</summary>
    public string? Validate()
    {
        if (!(LearningRate > 0) || !float.IsFinite(LearningRate)) return $"--lr: must be a positive number, got {LearningRate}";
        if (!(Momentum >= 0 && Momentum < 1)) return $"--momentum: must be in [0, 1), got {Momentum}";
        if (!(WeightDecay >= 0) || !float.IsFinite(WeightDecay)) return $"--weight-decay: must be ≥ 0, got {WeightDecay}";
        if (!(Beta1 >= 0 && Beta1 < 1)) return $"--beta1: must be in [0, 1), got {Beta1}";
        if (!(Beta2 >= 0 && Beta2 < 1)) return $"--beta2: must be in [0, 1), got {Beta2}";
        if (!(Epsilon > 0)) return $"--epsilon: must be positive, got {Epsilon}";
        if (DecayEvery < 1) return $"--decay-every: must be ≥ 1, got {DecayEvery}";
        if (!(DecayFactor > 0 && DecayFactor <= 1)) return $"--decay-factor: must be in (0, 1], got {DecayFactor}";
        if (!(MinLearningRate >= 0 && MinLearningRate <= LearningRate)) return $"--min-lr: must be in [0, lr], got {MinLearningRate}";
        if (WarmupSteps < 0) return $"--warmup-steps: must be ≥ 0, got {WarmupSteps}";
        return null;
    }

    /// <summary>
    /// γ for a step (0-based global step; epoch of that step; total steps of the run). Computed in double
    /// and rounded once, on the one node that applies updates, so it is the same for any worker count; with
    /// <see cref="PortableMath"/>'s power and cosine instead of the C library's, so on any CPU too.
    /// </summary>
    public float LearningRateAt(long step, int epoch, long totalSteps)
    {
        double lr = Schedule switch
        {
            ScheduleKind.Constant => LearningRate,
            ScheduleKind.Step => LearningRate * PortableMath.Power(DecayFactor, epoch / DecayEvery),
            ScheduleKind.Cosine => MinLearningRate + 0.5 * (LearningRate - MinLearningRate)
                * (1 + PortableMath.CosPi(Math.Min(step, Math.Max(0, totalSteps - 1)) / (double)Math.Max(1, totalSteps - 1))),
            _ => throw new InvalidOperationException($"unknown schedule {Schedule}"),
        };
        if (step < WarmupSteps)
        {
            lr *= (step + 1) / (double)WarmupSteps;
        }
        return (float)lr;
    }
}
