using System.CommandLine;
using System.Net;
using System.Net.Sockets;
using DistributedBackprop.Actors.Cluster;
using DistributedBackprop.Actors.Transport;

namespace DistributedBackprop.Cli.Commands;

/// <summary>
/// Where a cluster node listens and how it reaches the others; each option overrides the DBP_* variable of
/// the same meaning, which overrides the HOCON file (cluster-config/README.md).
/// </summary>
internal sealed class NodeOptionSet
{
    public Option<string?> BindHost { get; } = new("--bind-host") { Description = "Address to bind (Akka and the bulk channel); 0.0.0.0 for all interfaces. Env: DBP_BIND_HOST. Default 127.0.0.1.", HelpName = "HOST" };
    public Option<string?> PublicHostname { get; } = new("--public-hostname") { Description = "Address other nodes use to reach this one (a container's service name, a machine's IP). Env: DBP_PUBLIC_HOSTNAME. Default: the bind host, or this machine's first non-loopback IPv4 address when binding 0.0.0.0.", HelpName = "HOST" };
    public Option<int?> BulkPort { get; } = OptionParsing.OptionalPortOption("--bulk-port", "Port of the bulk tensor channel (0 = any free port). Env: DBP_BULK_PORT.", 0);
    public Option<string?> Config { get; } = new("--cluster-config") { Description = "HOCON file layered over the built-in cluster (Akka) configuration. Env: DBP_CONFIG. (Training options belong in a --run file.)", HelpName = "FILE" };
    public Option<bool> Insecure { get; } = new("--insecure") { Description = "No TLS, no join token, no certificates: anyone who can reach this node's ports can join, read and poison the run. Only for a trusted, isolated network; every node of the cluster must use it. Env: DBP_INSECURE=1." };
    public Option<bool> ShowConfig { get; } = new("--show-config") { Description = "Print the resulting Akka configuration (remote, cluster) and exit." };

    public void AddTo(Command command)
    {
        foreach (Option option in new Option[] { BindHost, PublicHostname, BulkPort, Config, Insecure, ShowConfig })
        {
            command.Options.Add(option);
        }
    }

    public NodeSettings Settings(ParseResult parse, int? port, IReadOnlyList<string>? seeds)
    {
        NodeSettings settings = new NodeSettings
        {
            BindHost = parse.GetValue(BindHost),
            Port = port,
            PublicHostname = parse.GetValue(PublicHostname),
            SeedNodes = seeds,
            BulkPort = parse.GetValue(BulkPort),
            ConfigFile = parse.GetValue(Config),
            Insecure = parse.GetValue(Insecure) ? true : null,
        }.Resolve();
        CheckBindHost(settings.BindHost);
        return settings;
    }

    /// <summary>
    /// --bind-host must name an address of this machine: resolved and bound (port 0, no listen) now, so a typo
    /// is one line naming the option instead of a SocketException from deep inside the node's start.
    /// </summary>
    private static void CheckBindHost(string? host)
    {
        if (host is null or "0.0.0.0" or "*" or "::")
        {
            return;
        }
        IPAddress address;
        try
        {
            address = BulkChannel.BindAddress(host);
        }
        catch (Exception e) when (e is SocketException or ArgumentException or InvalidOperationException)
        {
            throw new UsageException($"--bind-host {host}: not an IP address, nor a host name with an IPv4 address ({(e is InvalidOperationException ? "it has none" : e.Message)})");
        }
        try
        {
            using var socket = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            socket.Bind(new IPEndPoint(address, 0));
        }
        catch (SocketException e)
        {
            throw new UsageException($"--bind-host {host}: cannot bind to {address} ({e.Message}); give an address of this machine, or 0.0.0.0 for all");
        }
    }

    /// <summary>--show-config: the parts of the configuration a user tunes.</summary>
    public static int Show(NodeSettings settings, string role)
    {
        Akka.Configuration.Config config = settings.BuildConfig(role);
        Console.WriteLine(config.GetConfig("akka.remote.dot-netty.tcp").ToString(includeFallback: true));
        Console.WriteLine(config.GetConfig("akka.cluster").ToString(includeFallback: false));
        Console.WriteLine($"# bulk channel: {settings.BindHost ?? "127.0.0.1"}:{settings.BulkPort ?? 0}, advertised as {settings.AdvertisedHost()}; seeds: {string.Join(", ", settings.SeedNodes ?? [])}");
        return ExitCodes.Success;
    }
}
