using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text.RegularExpressions;

namespace DistributedBackprop.Actors.Security;

/// <summary>
/// The cluster's certificate authority and join token, kept by `dbp serve` in its state directory
/// (<c>ca.pfx</c>: the CA key and certificate; <c>join-token</c>: the token; both mode 0600), created on
/// first start and reused afterwards, so a restarted server keeps every waiting worker's token and
/// certificate valid. It issues node certificates: the server's own at each start, a worker's when the
/// worker proves it holds the token (<see cref="EnrollmentDesk"/>). Keys are ECDSA P-256.
/// </summary>
public sealed partial class ClusterAuthority
{
    public const string CaFile = "ca.pfx";
    public const string TokenFile = "join-token";
    private static readonly TimeSpan NodeCertificateLifetime = TimeSpan.FromDays(30);

    private readonly X509Certificate2 _ca;

    private ClusterAuthority(X509Certificate2 ca, JoinToken token, string stateDirectory)
    {
        _ca = ca;
        Token = token;
        StateDirectory = stateDirectory;
    }

    public JoinToken Token { get; private set; }
    public string StateDirectory { get; }

    /// <summary>The CA certificate without its key: what every node trusts.</summary>
    public X509Certificate2 Certificate => X509CertificateLoader.LoadCertificate(_ca.RawData);

    /// <summary>
    /// Loads the CA and token from <paramref name="stateDirectory"/>, creating what is missing.
    /// <paramref name="newToken"/> replaces the token's secret (the CA stays: issued certificates stay valid).
    /// With <paramref name="tokenFile"/>: a valid token for this CA found there is adopted; otherwise the
    /// file is (re)written with the current token.
    /// </summary>
    public static ClusterAuthority LoadOrCreate(string stateDirectory, bool newToken = false, string? tokenFile = null)
    {
        try
        {
            Directory.CreateDirectory(stateDirectory);
            if (!OperatingSystem.IsWindows())
            {
                File.SetUnixFileMode(stateDirectory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ArgumentException($"{stateDirectory}: cannot use as the cluster state directory: {e.Message}", e);
        }
        string caPath = Path.Combine(stateDirectory, CaFile);
        X509Certificate2 ca = File.Exists(caPath) ? LoadCa(caPath) : CreateCa(caPath);
        string pin = NodeIdentity.Pin(ca);
        string tokenPath = Path.Combine(stateDirectory, TokenFile);
        JoinToken? token = null;
        if (!newToken && tokenFile is not null && File.Exists(tokenFile))
        {
            token = TryRead(tokenFile) is { } fromFile && fromFile.CaPin == pin ? fromFile : null;
        }
        if (!newToken && token is null && File.Exists(tokenPath))
        {
            token = TryRead(tokenPath) is { } stored && stored.CaPin == pin ? stored : null;
        }
        token ??= JoinToken.Create(pin);
        WriteSecret(tokenPath, token.ToString());
        if (tokenFile is not null && (!File.Exists(tokenFile) || TryRead(tokenFile)?.ToString() != token.ToString()))
        {
            WriteSecret(tokenFile, token.ToString());
        }
        return new ClusterAuthority(ca, token, stateDirectory);
    }

    private static JoinToken? TryRead(string path)
    {
        try
        {
            return JoinToken.ReadFile(path);
        }
        catch (ArgumentException)
        {
            return null;
        }
    }

    /// <summary>The default state directory: $DBP_STATE_DIR, else ~/.dbp/cluster.</summary>
    public static string DefaultStateDirectory() =>
        Environment.GetEnvironmentVariable("DBP_STATE_DIR") is { Length: > 0 } fromEnvironment
            ? fromEnvironment
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".dbp", "cluster");

    /// <summary>A certificate (with its new private key) for this node: the server's own identity.</summary>
    public NodeIdentity IssueOwn(string role, string nodeName, string akkaAddress)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        using X509Certificate2 certificate = Issue(key.ExportSubjectPublicKeyInfo(), role, nodeName, akkaAddress);
        return new NodeIdentity(WithKey(certificate, key), Certificate);
    }

    /// <summary>
    /// A node certificate for a public key the node sent (DER SubjectPublicKeyInfo, ECDSA P-256 only). The
    /// CA decides the role; the name and address are checked for shape.
    /// </summary>
    public X509Certificate2 Issue(ReadOnlySpan<byte> subjectPublicKeyInfo, string role, string nodeName, string akkaAddress)
    {
        if (!NodeNamePattern().IsMatch(nodeName))
        {
            throw new ArgumentException($"node name '{Printable(nodeName)}' must be 1-64 letters, digits, '.', '_' or '-'");
        }
        if (!Uri.TryCreate(akkaAddress, UriKind.Absolute, out Uri? address) || address.Scheme is not ("akka.ssl.tcp" or "akka.tcp") || address.Port <= 0 || address.UserInfo != Cluster.ClusterNaming.SystemName)
        {
            throw new ArgumentException($"'{Printable(akkaAddress)}' is not an akka.ssl.tcp://{Cluster.ClusterNaming.SystemName}@HOST:PORT address");
        }
        using var key = ECDsa.Create();
        try
        {
            key.ImportSubjectPublicKeyInfo(subjectPublicKeyInfo, out _);
        }
        catch (CryptographicException)
        {
            throw new ArgumentException("the public key is not an ECDSA key");
        }
        if (key.KeySize != 256)
        {
            throw new ArgumentException($"the public key has {key.KeySize} bits; P-256 is required");
        }
        var subject = new X500DistinguishedNameBuilder();
        subject.AddCommonName(nodeName);
        subject.AddOrganizationalUnitName(role);
        var request = new CertificateRequest(subject.Build(), key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature | X509KeyUsageFlags.KeyAgreement, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1"), new Oid("1.3.6.1.5.5.7.3.2")], false));
        var names = new SubjectAlternativeNameBuilder();
        names.AddUri(address);
        request.CertificateExtensions.Add(names.Build());
        DateTimeOffset now = DateTimeOffset.UtcNow;
        return request.Create(_ca, now.AddMinutes(-5), now.Add(NodeCertificateLifetime), RandomNumberGenerator.GetBytes(16));
    }

    /// <summary>A certificate joined with its private key, in a form SslStream can use as a server certificate on every platform.</summary>
    public static X509Certificate2 WithKey(X509Certificate2 certificate, ECDsa key)
    {
        using X509Certificate2 joined = certificate.CopyWithPrivateKey(key);
        return X509CertificateLoader.LoadPkcs12(joined.Export(X509ContentType.Pkcs12), null);
    }

    private static X509Certificate2 CreateCa(string path)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var subject = new X500DistinguishedNameBuilder();
        subject.AddCommonName($"dbp cluster CA {Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4))}");
        var request = new CertificateRequest(subject.Build(), key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, true, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        DateTimeOffset now = DateTimeOffset.UtcNow;
        using X509Certificate2 ca = request.CreateSelfSigned(now.AddMinutes(-5), now.AddYears(10));
        byte[] pfx = ca.Export(X509ContentType.Pkcs12);
        WriteSecret(path, pfx);
        return X509CertificateLoader.LoadPkcs12(pfx, null);
    }

    private static X509Certificate2 LoadCa(string path)
    {
        try
        {
            X509Certificate2 ca = X509CertificateLoader.LoadPkcs12FromFile(path, null);
            if (!ca.HasPrivateKey || ca.GetECDsaPrivateKey() is null)
            {
                throw new ArgumentException($"{path}: the cluster CA file holds no ECDSA private key");
            }
            return ca;
        }
        catch (CryptographicException e)
        {
            throw new ArgumentException($"{path}: not a readable cluster CA (PKCS#12): {e.Message}", e);
        }
    }

    private static void WriteSecret(string path, string text) => WriteSecret(path, System.Text.Encoding.ASCII.GetBytes(text + "\n"));

    /// <summary>Owner-only file, written to a temporary name and renamed, so a crash never leaves half a key.</summary>
    private static void WriteSecret(string path, byte[] bytes)
    {
        string temporary = path + ".tmp-" + Environment.ProcessId;
        try
        {
            var options = new FileStreamOptions { Mode = FileMode.Create, Access = FileAccess.Write };
            if (!OperatingSystem.IsWindows())
            {
                options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
            }
            using (var stream = new FileStream(temporary, options))
            {
                stream.Write(bytes);
                stream.Flush(flushToDisk: true);
            }
            File.Move(temporary, path, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            File.Delete(temporary);
            throw new ArgumentException($"{path}: cannot write: {e.Message}", e);
        }
    }

    internal static string Printable(string text) => new(text.Take(80).Select(c => char.IsControl(c) ? '?' : c).ToArray());

    [GeneratedRegex(@"^[A-Za-z0-9._-]{1,64}$")]
    private static partial Regex NodeNamePattern();
}
