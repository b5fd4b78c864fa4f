using System.Globalization;
using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using Akka.Actor;
using Akka.Actor.Setup;
using Akka.Configuration;
using Akka.Remote.Transport.DotNetty;

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
    public string? TlsCertificate { get; init; }
    public string? TlsPassword { get; init; }
    public string? ConfigFile { get; init; }

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
            TlsCertificate = TlsCertificate ?? environment("DBP_TLS_CERTIFICATE"),
            TlsPassword = TlsPassword ?? environment("DBP_TLS_PASSWORD"),
            ConfigFile = ConfigFile ?? environment("DBP_CONFIG"),
        };
    }

    public bool Tls => TlsCertificate is not null;

    /// <summary>akka.tcp, or akka.ssl.tcp with TLS: every address of the cluster must use the same scheme.</summary>
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

    public X509Certificate2? LoadCertificate()
    {
        if (TlsCertificate is null)
        {
            return null;
        }
        try
        {
            return X509CertificateLoader.LoadPkcs12FromFile(TlsCertificate, TlsPassword);
        }
        catch (Exception e) when (e is System.Security.Cryptography.CryptographicException or IOException)
        {
            throw new ArgumentException($"{TlsCertificate}: cannot load the TLS certificate: {e.Message}", e);
        }
    }

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
            config = ConfigurationFactory.ParseString(File.ReadAllText(ConfigFile)).WithFallback(config);
        }
        var overrides = new List<string> { $"akka.cluster.roles = [\"{role}\"]" };
        if (BindHost is not null) overrides.Add($"akka.remote.dot-netty.tcp.hostname = \"{BindHost}\"");
        if (Port is int port) overrides.Add($"akka.remote.dot-netty.tcp.port = {port}");
        string? bind = BindHost ?? config.GetString("akka.remote.dot-netty.tcp.hostname", null);
        if (PublicHostname is not null || bind is "0.0.0.0" or "*" or "::")
        {
            overrides.Add($"akka.remote.dot-netty.tcp.public-hostname = \"{AdvertisedHost()}\"");
        }
        if (Tls)
        {
            overrides.Add("akka.remote.dot-netty.tcp.enable-ssl = true");
        }
        return ConfigurationFactory.ParseString(string.Join('\n', overrides)).WithFallback(config);
    }

    /// <summary>ActorSystem setup: the config, plus the TLS certificate for Akka's DotNetty transport.</summary>
    public ActorSystemSetup BuildSetup(Config config)
    {
        BootstrapSetup bootstrap = BootstrapSetup.Create().WithConfig(config);
        X509Certificate2? certificate = LoadCertificate();
        // Peers are pinned by certificate on the bulk channel; Akka's transport encrypts with the same
        // certificate (a self-signed cluster certificate would not pass chain validation).
        return certificate is null ? ActorSystemSetup.Create(bootstrap) : ActorSystemSetup.Create(bootstrap, new DotNettySslSetup(certificate, suppressValidation: true));
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
}
