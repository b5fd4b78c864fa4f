namespace DistributedBackprop.Network;

/// <summary>
/// Which parameters of θ are there yet: a worker's θ arrives from the shards in pieces, and the forward pass runs
/// each block whose parameters have come while the rest are still on their way (issue 9's overlap, θ's way back).
/// </summary>
public interface IParameterPresence
{
    /// <summary>Whether parameters [<paramref name="start"/>, <paramref name="start"/> + <paramref name="count"/>) are all there.</summary>
    bool Has(int start, int count);
}

/// <summary>Every parameter is there: the plain forward pass.</summary>
public sealed class AllParameters : IParameterPresence
{
    public static readonly AllParameters Instance = new();

    private AllParameters()
    {
    }

    public bool Has(int start, int count) => true;
}
