using DistributedBackprop.Actors.Cluster;
using DistributedBackprop.Actors.Transport;

namespace DistributedBackprop.Actors.Tests;

/// <summary>Node settings for in-process clusters on 127.0.0.1: secure by default, like `dbp serve` and `dbp worker`.</summary>
internal static class Loopback
{
    /// <summary>A server with any free ports; its CA and token live under <paramref name="directory"/>.</summary>
    public static NodeSettings Server(string directory) =>
        new() { BindHost = "127.0.0.1", Port = 0, BulkPort = 0, StateDirectory = Path.Combine(directory, "state") };

    /// <summary>A worker that joins <paramref name="server"/> with its join token.</summary>
    public static NodeSettings Worker(ClusterServer server) => new()
    {
        BindHost = "127.0.0.1",
        Port = 0,
        BulkPort = 0,
        SeedNodes = [$"127.0.0.1:{server.Address.Port}"],
        ServerBulkPort = BulkChannel.ParseEndpoint(server.Channel.Endpoint).Port,
        Token = server.Authority?.Token.ToString(),
        // A test whose server goes away must not leave workers knocking for minutes.
        RejoinTimeout = TimeSpan.FromSeconds(10),
    };
}
