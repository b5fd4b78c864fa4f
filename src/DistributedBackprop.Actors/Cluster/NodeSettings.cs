using System.Globalization;
using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using Akka.Actor;
using Akka.Actor.Setup;
using Akka.Configuration;
using Akka.Event;
using Akka.Remote.Transport.DotNetty;
using DistributedBackprop.Actors.Security;

namespace DistributedBackprop.Actors.Cluster;

/// <summary>
/// Where a node listens and how it reaches the cluster. Every field may be left null on the command line;
/// <see cref="Resolve"/> then takes it from the environment (DBP_*), else from the HOCON file, else from the
/// defaults — the one documented override chain (cluster-config/README.md).
/// </summary>
public sealed record NodeSettings
{
    public string? BindHost { get; init; }
    public int? Port { get; init; }
    public string? PublicHostname { get; init; }
    public IReadOnlyList<string>? SeedNodes { get; init; }
    public int? BulkPort { get; init; }

    /// <summary>The node's link for the bulk channel's pacing (<see cref="Transport.LinkPacing.Parse"/>: auto, off, or e.g. 1gbit); null: the HOCON file's.</summary>
    public string? LinkRate { get; init; }
    public string? ConfigFile { get; init; }

    /// <summary>--insecure: no TLS, no token, no certificates (a trusted lab network only).</summary>
    public bool? Insecure { get; init; }

    /// <summary>Worker: the join token (or read from <see cref="TokenFile"/>).</summary>
    public string? Token { get; init; }

    /// <summary>Server: where the token is written (0600, reused if present); worker: where it is read.</summary>
    public string? TokenFile { get; init; }

    /// <summary>Server: replace the join token's secret (the CA, and certificates already issued, stay).</summary>
    public bool NewToken { get; init; }

    /// <summary>Server: where the cluster CA and token live between runs.</summary>
    public string? StateDirectory { get; init; }

    /// <summary>Worker: the server's bulk channel port, where the join handshake happens (default: the seed's port + 1).</summary>
    public int? ServerBulkPort { get; init; }

    /// <summary>Worker: how long to keep trying to rejoin after losing the server (0: exit at once). Default 5 minutes.</summary>
    public TimeSpan? RejoinTimeout { get; init; }

    /// <summary>Worker: how long to keep knocking when the server does not answer at the start. Default 5 minutes.</summary>
    public TimeSpan? JoinTimeout { get; init; }

    /// <summary>Fills unset fields from DBP_* environment variables.</summary>
    public NodeSettings Resolve(Func<string, string?>? environment = null)
    {
        environment ??= Environment.GetEnvironmentVariable;
        static int? Int(string? text, string name) =>
            text is null ? null
            : int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int value) && value >= 0 && value <= 65535 ? value
            : throw new ArgumentException($"{name}: '{text}' is not a port number");
        return this with
        {
            BindHost = BindHost ?? environment("DBP_BIND_HOST"),
            Port = Port ?? Int(environment("DBP_PORT"), "DBP_PORT"),
            PublicHostname = PublicHostname ?? environment("DBP_PUBLIC_HOSTNAME"),
            SeedNodes = SeedNodes ?? environment("DBP_SEED_NODES")?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries),
            BulkPort = BulkPort ?? Int(environment("DBP_BULK_PORT"), "DBP_BULK_PORT"),
            LinkRate = LinkRate ?? Transport.LinkPacing.Checked(environment("DBP_LINK_RATE"), "DBP_LINK_RATE"),
            ConfigFile = ConfigFile ?? environment("DBP_CONFIG"),
            Insecure = Insecure ?? (environment("DBP_INSECURE") is { } insecure ? insecure is "1" or "true" or "yes" : null),
            Token = Token ?? environment("DBP_JOIN_TOKEN"),
            TokenFile = TokenFile ?? environment("DBP_TOKEN_FILE"),
            StateDirectory = StateDirectory ?? environment("DBP_STATE_DIR"),
            ServerBulkPort = ServerBulkPort ?? Int(environment("DBP_SERVER_BULK_PORT"), "DBP_SERVER_BULK_PORT"),
            RejoinTimeout = RejoinTimeout ?? Seconds(environment("DBP_REJOIN_TIMEOUT"), "DBP_REJOIN_TIMEOUT"),
            JoinTimeout = JoinTimeout ?? Seconds(environment("DBP_JOIN_TIMEOUT"), "DBP_JOIN_TIMEOUT"),
        };
    }

    /// <summary>A duration in seconds from an environment variable: 0 to a week.</summary>
    private static TimeSpan? Seconds(string? text, string name) =>
        text is null ? null
        : double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double seconds) && seconds >= 0 && seconds <= 7 * 86400 ? TimeSpan.FromSeconds(seconds)
        : throw new ArgumentException($"{name}: '{text}' is not a number of seconds");

    /// <summary>Secure unless --insecure: mutual TLS on every connection, certificates from the cluster CA.</summary>
    public bool Tls => Insecure != true;

    /// <summary>akka.ssl.tcp, or akka.tcp with --insecure: every address of the cluster must use the same scheme.</summary>
    public string Scheme => Tls ? "akka.ssl.tcp" : "akka.tcp";

    /// <summary>Parses "host:port" into an Akka address of system "dbp".</summary>
    public Address SeedAddress(string hostPort)
    {
        int colon = hostPort.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(hostPort[(colon + 1)..], NumberStyles.Integer, CultureInfo.InvariantCulture, out int port) || port is <= 0 or > 65535)
        {
            throw new ArgumentException($"seed node '{hostPort}' is not HOST:PORT");
        }
        return new Address(Scheme, ClusterNaming.SystemName, hostPort[..colon], port);
    }

    /// <summary>
    /// This node's Akka port: the one configured, or — for port 0 — a free one picked now, because a node's
    /// certificate names its Akka address, so the address must be known before the node starts.
    /// </summary>
    /// <param name="bindHost">the host the node's remoting binds (its configured hostname): the port is probed there.</param>
    public int ChoosePort(string bindHost)
    {
        if (Port is int port and > 0)
        {
            return port;
        }
        return FreePort(bindHost);
    }

    /// <summary>
    /// A port free on the bind host now (it may be taken again before the node binds it: the worker then
    /// chooses another). Tests replace it to hand out a port that is already taken.
    /// </summary>
    internal Func<string, int> FreePort { get; init; } = ProbeFreePort;

    private static int ProbeFreePort(string bindHost)
    {
        TcpListener? probe = null;
        try
        {
            probe = new TcpListener(Transport.BulkChannel.BindAddress(bindHost), 0);
            probe.Start();
        }
        catch (Exception e) when (e is SocketException or InvalidOperationException)
        {
            // --bind-host is checked where it is given; a hostname from --cluster-config is checked here.
            probe?.Dispose();
            string why = e is SocketException socket ? socket.SocketErrorCode.ToString() : "no IPv4 address";
            throw new ArgumentException($"{bindHost}: this node cannot listen on it ({why}); check --bind-host, or akka.remote.dot-netty.tcp.hostname in the cluster config");
        }
        int chosen = ((IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop();
        return chosen;
    }

    /// <summary>The Akka address this node will have: scheme, system, advertised host, port.</summary>
    public Address NodeAddress(int port) => new(Scheme, ClusterNaming.SystemName, AdvertisedHost(), port);

    /// <summary>The host other nodes should use: the public hostname, else the bind host, else this machine's first non-loopback IPv4 address.</summary>
    public string AdvertisedHost()
    {
        if (!string.IsNullOrEmpty(PublicHostname))
        {
            return PublicHostname;
        }
        string bind = BindHost ?? "127.0.0.1";
        if (bind is not ("0.0.0.0" or "*" or "::"))
        {
            return bind;
        }
        return NetworkInterface.GetAllNetworkInterfaces()
            .Where(n => n.OperationalStatus == OperationalStatus.Up && n.NetworkInterfaceType != NetworkInterfaceType.Loopback)
            .SelectMany(n => n.GetIPProperties().UnicastAddresses)
            .Select(a => a.Address)
            .FirstOrDefault(a => a.AddressFamily == AddressFamily.InterNetwork && !IPAddress.IsLoopback(a))?.ToString() ?? "127.0.0.1";
    }

    /// <summary>
    /// The node's configuration: embedded local.hocon, embedded cluster.hocon, the file, then the values of
    /// this (resolved) record, which come from the environment or the command line.
    /// </summary>
    public Config BuildConfig(string role)
    {
        Config config = Embedded("cluster.hocon").WithFallback(LocalTraining.LoadConfig());
        if (ConfigFile is not null)
        {
            if (!File.Exists(ConfigFile))
            {
                throw new ArgumentException($"{ConfigFile}: configuration file not found");
            }
            try
            {
                config = ConfigurationFactory.ParseString(File.ReadAllText(ConfigFile)).WithFallback(config);
            }
            catch (Exception e) when (e is FormatException or ConfigurationException)
            {
                // The parser's message quotes the rest of the file: keep its first clause, printable, so a
                // binary file is not dumped on the terminal.
                string reason = new(e.Message.Split(':', '\n')[0].Where(c => !char.IsControl(c)).Take(120).ToArray());
                throw new ArgumentException($"{ConfigFile}: not a HOCON configuration file ({reason.Trim()})");
            }
            try
            {
                // Checked now, so a bad value is one line naming the file, not a failure as the bulk channel starts;
                // only when it is the one used (an option or variable overrides it).
                if (LinkRate is null)
                {
                    Transport.LinkPacing.Parse(config.GetString("dbp.bulk-channel.link-rate", "auto"), "dbp.bulk-channel.link-rate");
                }
            }
            catch (ArgumentException e)
            {
                throw new ArgumentException($"{ConfigFile}: {e.Message}");
            }
        }
        var overrides = new List<string> { $"akka.cluster.roles = [\"{role}\"]", TlsFailureHold.NodeConfig };
        // Akka's own hook on SIGTERM, Ctrl-C and process exit is off on every node: the commands handle them. The
        // worker leaves, then stops, exit 0 (with Akka's hook it left first and the agent took its own leaving for a
        // lost server). The server exits at once, 143 or 130, as a crash would: the workers keep knocking and rejoin
        // its restart. Akka's hook ran a coordinated shutdown inside the signal handler and waited for it, which a
        // held failed handshake (TlsFailureHold) made a wait of days: a SIGTERM did not stop a held server.
        overrides.Add("akka.coordinated-shutdown.run-by-clr-shutdown-hook = off");
        if (BindHost is not null) overrides.Add($"akka.remote.dot-netty.tcp.hostname = \"{BindHost}\"");
        if (Port is int port) overrides.Add($"akka.remote.dot-netty.tcp.port = {port}");
        string? bind = BindHost ?? config.GetString("akka.remote.dot-netty.tcp.hostname", null);
        if (PublicHostname is not null || bind is "0.0.0.0" or "*" or "::")
        {
            overrides.Add($"akka.remote.dot-netty.tcp.public-hostname = \"{AdvertisedHost()}\"");
        }
        overrides.Add($"akka.remote.dot-netty.tcp.enable-ssl = {(Tls ? "true" : "false")}");
        if (LinkRate is not null)
        {
            // Checked where it was given (Resolve, the option); quoted so HOCON takes it as it is.
            overrides.Add($"dbp.bulk-channel.link-rate = \"{LinkRate.Trim()}\"");
        }
        return ConfigurationFactory.ParseString(string.Join('\n', overrides)).WithFallback(config);
    }

    /// <summary>
    /// ActorSystem setup: the config, plus this node's certificate for Akka's DotNetty transport — mutual
    /// TLS, and a peer is accepted only if its certificate chains to the cluster CA (hostnames are not
    /// checked: the CA, not DNS, says who belongs to the cluster).
    /// </summary>
    public static ActorSystemSetup BuildSetup(Config config, NodeIdentity? identity)
    {
        BootstrapSetup bootstrap = BootstrapSetup.Create().WithConfig(config);
        if (identity is null)
        {
            return ActorSystemSetup.Create(bootstrap);
        }
        var tls = new DotNettySslSetup(identity.Certificate, suppressValidation: false, requireMutualAuthentication: true, validateCertificateHostname: false,
            (certificate, _, peer, _, log) =>
            {
                if (identity.Validate(certificate, out string problem) is not null)
                {
                    return true;
                }
                log.Warning("refused a TLS connection with {0}: {1}", peer, problem);
                return false;
            });
        return ActorSystemSetup.Create(bootstrap, tls);
    }

    internal static Config Embedded(string name)
    {
        using Stream stream = typeof(NodeSettings).Assembly.GetManifestResourceStream($"DistributedBackprop.Actors.{name}")
            ?? throw new InvalidOperationException($"{name} is missing from the assembly");
        using var reader = new StreamReader(stream);
        return ConfigurationFactory.ParseString(reader.ReadToEnd());
    }
}

/// <summary>Names shared by every node of a cluster.</summary>
public static class ClusterNaming
{
    public const string SystemName = "dbp";
    public const string ServerRole = "parameter-server";
    public const string WorkerRole = "worker";
    public const string GatekeeperName = "gatekeeper";
    public const string WorkerAgentName = "worker-agent";

    /// <summary>The parameter server's path on the server node.</summary>
    public const string ParameterServerPath = "/user/coordinator/" + TrainingCoordinator.ServerName;

    /// <summary>The worker actor's path on a worker node.</summary>
    public const string WorkerActorPath = "/user/" + WorkerAgentName + "/worker";

    /// <summary>Parameter shards a worker node hosts are named shard-{index}-{incarnation} under its agent.</summary>
    public const string ShardPathPrefix = "/user/" + WorkerAgentName + "/shard-";
}
