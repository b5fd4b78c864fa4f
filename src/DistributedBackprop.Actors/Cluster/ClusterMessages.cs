using DistributedBackprop.Data;

namespace DistributedBackprop.Actors.Cluster;

/// <summary>
/// Worker node → server's gatekeeper, once the node is a cluster member: may it take part? States the
/// protocol version and Akka frame size it runs with (all nodes must agree), where its bulk channel
/// listens (host:port; the host must be the node's own Akka host, so a join request cannot point the
/// server at a third machine), and whether it needs the training data streamed because it has no files.
/// </summary>
public sealed record JoinRequest(string NodeName, int ProtocolVersion, long MaximumFrameSize, string BulkEndpoint, bool WantsStreamedData) : IWireMessage;

/// <summary>
/// Gatekeeper → worker node: the run's configuration (JSON), where the server read its data and how it
/// split it, the content hash and network it expects, and the input preprocessing fitted on the server's
/// training rows. (The server's bulk endpoint is not in it: the worker knows it from the join handshake.)
/// <see cref="CsvHeader"/> is the server's --header: the same rule on the same file reads the same rows.
/// </summary>
public sealed record JoinAccepted(
    string ConfigJson,
    string? DataPath,
    string? LabelColumn,
    CsvHeader CsvHeader,
    double TestFraction,
    string DataHash,
    string Architecture,
    float[] PreprocessShift,
    float[] PreprocessScale) : IWireMessage;

/// <summary>Gatekeeper → worker node: it may not join; the node exits with this reason.</summary>
public sealed record JoinRefused(string Reason) : IWireMessage;

/// <summary>Worker node → gatekeeper: stream me the (preprocessed) training rows.</summary>
public sealed record RequestTrainingData : IWireMessage
{
    public static readonly RequestTrainingData Instance = new();
}

/// <summary>Gatekeeper → worker node, over the bulk channel: rows [FirstRow, FirstRow + Labels.Length) of TotalRows.</summary>
public sealed record TrainingDataChunk(int FirstRow, int TotalRows, int Features, float[] Values, int[] Labels) : IWireMessage;

/// <summary>Server → every worker node: training is over (or failed); the node shuts down and its process exits.</summary>
public sealed record TrainingFinished(long Steps, bool Succeeded, string Message) : IWireMessage;
