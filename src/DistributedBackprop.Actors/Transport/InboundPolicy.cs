using DistributedBackprop.Actors.Cluster;

namespace DistributedBackprop.Actors.Transport;

/// <summary>
/// What a node accepts on its bulk channel: a closed list of (manifest, recipient actor, peer role), and
/// for each manifest the largest payload the run can need, known before a byte of it is allocated. A frame
/// outside the list, or longer than its limit, closes its connection. Plain class, no Akka.
/// </summary>
public sealed class InboundPolicy
{
    /// <summary>Control messages: names, versions, reasons.</summary>
    public const long ControlBytes = 64 << 10;

    /// <summary>Shard maps and the workers a shard serves: an actor path and an endpoint per peer (thousands of them).</summary>
    public const long PeerListBytes = 4 << 20;

    /// <summary>A <see cref="JoinAccepted"/> carries the run's configuration and two floats per input feature (preprocessing).</summary>
    public const long JoinAcceptedBytes = 32 << 20;

    /// <summary>Per-frame overhead of a tensor message besides its floats (step, node, result, counts).</summary>
    private const long TensorHeaderBytes = 1024;

    private readonly Dictionary<string, Rule> _rules;
    private long _parameters = -1;
    private long _features = -1;
    private long _parts;

    private InboundPolicy(IEnumerable<Rule> rules) => _rules = rules.ToDictionary(r => r.Manifest);

    /// <summary>The parameter-server node: workers send join requests, registrations and gradients.</summary>
    public static InboundPolicy ServerNode() => new(
    [
        new("JQ", "/user/" + ClusterNaming.GatekeeperName, ClusterNaming.WorkerRole, Kind.Control),
        new("RD", "/user/" + ClusterNaming.GatekeeperName, ClusterNaming.WorkerRole, Kind.Control),
        new("RW", ClusterNaming.ParameterServerPath, ClusterNaming.WorkerRole, Kind.Control),
        new("GC", ClusterNaming.ParameterServerPath, ClusterNaming.WorkerRole, Kind.Tensor),
        // From parameter shards co-located on worker nodes (--server-shards).
        new("SY", ClusterNaming.ParameterServerPath, ClusterNaming.WorkerRole, Kind.Control),
        new("SR", ClusterNaming.ParameterServerPath, ClusterNaming.WorkerRole, Kind.Control),
        new("SP", ClusterNaming.ParameterServerPath, ClusterNaming.WorkerRole, Kind.Control),
        new("SF", ClusterNaming.ParameterServerPath, ClusterNaming.WorkerRole, Kind.Control),
        new("MS", ClusterNaming.ParameterServerPath, ClusterNaming.WorkerRole, Kind.Control),
        new("SX", ClusterNaming.ParameterServerPath, ClusterNaming.WorkerRole, Kind.ShardState),
    ]);

    /// <summary>A worker node: only the parameter server talks to it.</summary>
    public static InboundPolicy WorkerNode() => new(
    [
        new("JA", "/user/" + ClusterNaming.WorkerAgentName, ClusterNaming.ServerRole, Kind.JoinAccepted),
        new("JR", "/user/" + ClusterNaming.WorkerAgentName, ClusterNaming.ServerRole, Kind.Control),
        new("DC", "/user/" + ClusterNaming.WorkerAgentName, ClusterNaming.ServerRole, Kind.DataChunk),
        new("FN", "/user/" + ClusterNaming.WorkerAgentName, ClusterNaming.ServerRole, Kind.Control),
        new("CG", ClusterNaming.WorkerActorPath, ClusterNaming.ServerRole, Kind.Tensor),
        new("WA", ClusterNaming.WorkerActorPath, ClusterNaming.ServerRole, Kind.Control),
        new("WR", ClusterNaming.WorkerActorPath, ClusterNaming.ServerRole, Kind.Control),
        // Parameter shards (--server-shards): hosted here on the server's word, fed by the workers of other
        // nodes; the shards of other nodes send this node's worker their slices of θ.
        new("HS", "/user/" + ClusterNaming.WorkerAgentName, ClusterNaming.ServerRole, Kind.ShardState),
        new("SM", ClusterNaming.WorkerActorPath, ClusterNaming.ServerRole, Kind.PeerList),
        new("PL", ClusterNaming.WorkerActorPath, ClusterNaming.WorkerRole, Kind.Tensor),
        new("GL", ClusterNaming.ShardPathPrefix + "*", ClusterNaming.WorkerRole, Kind.Tensor),
        new("AP", ClusterNaming.ShardPathPrefix + "*", ClusterNaming.ServerRole, Kind.PeerList),
        new("PB", ClusterNaming.ShardPathPrefix + "*", ClusterNaming.ServerRole, Kind.PeerList),
        new("CL", ClusterNaming.ShardPathPrefix + "*", ClusterNaming.ServerRole, Kind.Control),
        new("QM", ClusterNaming.ShardPathPrefix + "*", ClusterNaming.ServerRole, Kind.Control),
    ]);

    /// <summary>Nothing at all: a node that only sends on its bulk channel.</summary>
    public static InboundPolicy None() => new([]);

    /// <summary>One manifest to one actor from peers of one role (the transfer benchmark).</summary>
    public static InboundPolicy Single(string manifest, string recipientPath, string peerRole) => new([new(manifest, recipientPath, peerRole, Kind.Tensor)]);

    /// <summary>
    /// Sets the sizes tensor limits derive from, once the run is known (the server at start, a worker on
    /// <see cref="JoinAccepted"/>): the parameters, the features, and the parts whose figures a node value may
    /// carry (with local steps, the replicas: 16 bytes each; 0 otherwise).
    /// </summary>
    public void SetRun(long parameters, long features, int parts = 0)
    {
        Interlocked.Exchange(ref _parameters, parameters);
        Interlocked.Exchange(ref _features, features);
        Interlocked.Exchange(ref _parts, parts);
    }

    /// <summary>Null if a frame may be read; otherwise why not. <paramref name="peerRole"/> is null on an unauthenticated (--insecure) connection.</summary>
    public string? Check(string manifest, string recipientPath, string? peerRole, long payloadLength)
    {
        if (!_rules.TryGetValue(manifest, out Rule? rule))
        {
            return $"manifest '{ClusterAuthorityText(manifest)}' is not accepted on this node's bulk channel";
        }
        if (rule.RecipientPath.EndsWith('*') ? !recipientPath.StartsWith(rule.RecipientPath[..^1], StringComparison.Ordinal) : recipientPath != rule.RecipientPath)
        {
            return $"a {manifest} frame may only go to {rule.RecipientPath}, not {ClusterAuthorityText(recipientPath)}";
        }
        if (peerRole is not null && peerRole != rule.PeerRole)
        {
            return $"a {manifest} frame may only come from a {rule.PeerRole} node, the peer's certificate says {peerRole}";
        }
        long limit = Limit(rule.Kind);
        if (payloadLength < 0 || payloadLength > limit)
        {
            return $"a {manifest} frame of {payloadLength} bytes exceeds its limit of {limit} bytes";
        }
        return null;
    }

    private long Limit(Kind kind)
    {
        long parameters = Interlocked.Read(ref _parameters), features = Interlocked.Read(ref _features);
        return kind switch
        {
            Kind.Control => ControlBytes,
            Kind.PeerList => PeerListBytes,
            Kind.JoinAccepted => JoinAcceptedBytes,
            // Unknown until the run is: no tensor may arrive before then.
            Kind.Tensor => parameters < 0 ? 0 : TensorHeaderBytes + 16 * Interlocked.Read(ref _parts) + 4 * parameters,
            // A parameter shard's slice of θ and of up to two optimizer state tensors (Adam's m and v).
            Kind.ShardState => parameters < 0 ? 0 : TensorHeaderBytes + 3 * (4 * parameters + 4),
            // Gatekeeper chunks: about a megabyte of rows, at least one row (values and label).
            Kind.DataChunk => features < 0 ? 0 : TensorHeaderBytes + 2 * Math.Max(Gatekeeper.ChunkBytes, 4 * (features + 1)),
            _ => 0,
        };
    }

    private static string ClusterAuthorityText(string text) => Security.ClusterAuthority.Printable(text);

    private enum Kind { Control, PeerList, JoinAccepted, Tensor, ShardState, DataChunk }

    private sealed record Rule(string Manifest, string RecipientPath, string PeerRole, Kind Kind);
}
