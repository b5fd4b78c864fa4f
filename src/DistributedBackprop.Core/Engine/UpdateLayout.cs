namespace DistributedBackprop.Engine;

/// <summary>
/// How an update run in several lanes, lane i on the thread that computes next on what lane i writes (the plain
/// trainer's <c>--threads</c>, local mode's workers), lays θ out (<see cref="GuardedUpdate"/>): <c>split</c>, one θ
/// cut into a slice per lane; <c>replicated</c>, a copy of θ and of the optimizer state per lane, each updated whole;
/// <c>auto</c>, replicated with exactly two lanes. Split, every step each core writes its slice over lines the other
/// cores read, then reads their slices back (9.2 ns a line written on this project's VM, against 3.1 once the other
/// core's copies are gone: `bash bench/remote-lines.sh`); replicated, each core reads the others' whole gradients
/// and writes only its own lines, for the update's arithmetic once per lane and a copy of the state per lane. With
/// N lanes each copy reads N − 1 gradients, so auto replicates only where it was measured faster (README, "One copy
/// of θ per worker"). The bits are the same in every layout.
/// </summary>
public static class UpdateLayout
{
    /// <summary>The environment variable that overrides the layout (the HOCON setting in local mode, auto otherwise).</summary>
    public const string EnvironmentVariable = "DBP_UPDATE_LAYOUT";

    public const string Auto = "auto", Replicated = "replicated", Split = "split";

    /// <summary><paramref name="layout"/> if it is one (<paramref name="source"/> names where it came from), else a one-line error.</summary>
    public static string Check(string layout, string source) => layout is Auto or Replicated or Split
        ? layout
        : throw new ArgumentException($"{source}: '{layout}' is none of auto, replicated, split");

    /// <summary>The layout <see cref="EnvironmentVariable"/> asks for, or null when it is not set.</summary>
    public static string? FromEnvironment() =>
        Environment.GetEnvironmentVariable(EnvironmentVariable) is { Length: > 0 } layout ? Check(layout, EnvironmentVariable) : null;

    /// <summary>Whether an update of <paramref name="lanes"/> lanes keeps a copy of θ per lane (local steps keep one θ: their outer step reads it before and after).</summary>
    public static bool Replicates(string layout, int lanes, TrainingConfig config) => config.LocalSteps is null && lanes > 1 && Check(layout, "the update layout") switch
    {
        Replicated => true,
        Split => false,
        _ => lanes == 2,
    };
}
