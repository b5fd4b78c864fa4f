using System.Buffers.Binary;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using Akka.Event;
using DistributedBackprop.Actors.Cluster;

namespace DistributedBackprop.Actors.Security;

/// <summary>What a worker learns at the server's door: its own identity (null with --insecure), and where the server is.</summary>
public sealed record EnrollmentResult(NodeIdentity? Identity, string ServerAkkaAddress, string ServerBulkEndpoint);

/// <summary>The server refused this node, or is not the server the token names: final, exit code 2.</summary>
public sealed class EnrollmentRefusedException(string message) : Exception(message);

/// <summary>
/// The join handshake, on the server's bulk channel port before a worker has a certificate (Swarm's join,
/// in our terms). The worker opens TLS without a client certificate; the server answers with the CA
/// certificate and its own Akka address; the worker checks the CA against the token's pin and the TLS
/// peer's certificate against that CA (so the secret goes to the real server only), then sends the
/// token's secret, its node name, the Akka address it will use and a fresh public key; the server checks
/// the secret in constant time and returns a node certificate for exactly that address. Every field is
/// length-prefixed and bounded; the whole exchange has a deadline. With --insecure both sides skip TLS,
/// secret and certificate, and the exchange only tells the worker where the server is.
/// </summary>
public static class Enrollment
{
    /// <summary>Connection prefix selecting the join handshake (frames start with "DBPB").</summary>
    public static readonly byte[] Magic = "DBPE"u8.ToArray();
    public const byte Version = 1;
    public static readonly TimeSpan Deadline = TimeSpan.FromSeconds(10);
    private const int MaxField = 4096;

    /// <summary>
    /// Enrolls at <paramref name="host"/>:<paramref name="port"/>. Network trouble (refused, reset, timeout)
    /// surfaces as <see cref="IOException"/>/<see cref="SocketException"/> and may be retried; a refusal or a
    /// server that does not match the token as <see cref="EnrollmentRefusedException"/>.
    /// </summary>
    public static async Task<EnrollmentResult> EnrollAsync(string host, int port, JoinToken? token, string nodeName, string akkaAddress, CancellationToken cancellation)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellation);
        deadline.CancelAfter(Deadline);
        using var client = new TcpClient { NoDelay = true };
        await client.ConnectAsync(host, port, deadline.Token).ConfigureAwait(false);
        Stream stream = client.GetStream();
        SslStream? ssl = null;
        if (token is not null)
        {
            // The server's certificate is checked below, once the CA it claims is known and matched to the
            // token's pin, and before anything secret is sent: the handshake itself cannot check it yet.
#pragma warning disable CA5359
            ssl = new SslStream(stream, leaveInnerStreamOpen: false, (_, _, _, _) => true);
#pragma warning restore CA5359
            try
            {
                await ssl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
                {
                    TargetHost = "dbp",
                    EnabledSslProtocols = SslProtocols.Tls13 | SslProtocols.Tls12,
                    CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
                }, deadline.Token).ConfigureAwait(false);
            }
            catch (AuthenticationException e)
            {
                throw new EnrollmentRefusedException($"TLS with the server at {host}:{port} failed ({e.Message}); is it a dbp serve without --insecure?");
            }
            stream = ssl;
        }
        await stream.WriteAsync(Magic, deadline.Token).ConfigureAwait(false);
        await stream.WriteAsync(new[] { Version, token is null ? (byte)0 : (byte)1 }, deadline.Token).ConfigureAwait(false);
        await stream.FlushAsync(deadline.Token).ConfigureAwait(false);
        await ExpectOk(stream, deadline.Token).ConfigureAwait(false);
        byte[] caBytes = await ReadField(stream, deadline.Token).ConfigureAwait(false);
        string serverAddress = Encoding.UTF8.GetString(await ReadField(stream, deadline.Token).ConfigureAwait(false));
        string serverBulk = Encoding.UTF8.GetString(await ReadField(stream, deadline.Token).ConfigureAwait(false));

        ECDsa? key = null;
        X509Certificate2? ca = null;
        if (token is not null)
        {
            if (Convert.ToHexStringLower(SHA256.HashData(caBytes)) != token.CaPin)
            {
                throw new EnrollmentRefusedException($"the server at {host}:{port} is not the cluster this join token belongs to (its CA does not match the token's pin)");
            }
            ca = X509CertificateLoader.LoadCertificate(caBytes);
            var checker = new NodeIdentity(ca, ca);
            PeerIdentity? server = checker.Validate(ssl!.RemoteCertificate, out string problem);
            if (server is null || server.Role != ClusterNaming.ServerRole || !SameAddress(server.AkkaAddress, serverAddress))
            {
                throw new EnrollmentRefusedException($"the server at {host}:{port} presented a certificate its own CA does not vouch for as the parameter server ({(server is null ? problem : server.ToString())})");
            }
            key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        }
        using (key)
        {
            await WriteField(stream, token?.Secret ?? [], deadline.Token).ConfigureAwait(false);
            await WriteField(stream, Encoding.UTF8.GetBytes(nodeName), deadline.Token).ConfigureAwait(false);
            await WriteField(stream, Encoding.UTF8.GetBytes(akkaAddress), deadline.Token).ConfigureAwait(false);
            await WriteField(stream, key?.ExportSubjectPublicKeyInfo() ?? [], deadline.Token).ConfigureAwait(false);
            await stream.FlushAsync(deadline.Token).ConfigureAwait(false);
            await ExpectOk(stream, deadline.Token).ConfigureAwait(false);
            byte[] issued = await ReadField(stream, deadline.Token).ConfigureAwait(false);
            if (key is null)
            {
                return new EnrollmentResult(null, serverAddress, serverBulk);
            }
            using X509Certificate2 certificate = X509CertificateLoader.LoadCertificate(issued);
            return new EnrollmentResult(new NodeIdentity(ClusterAuthority.WithKey(certificate, key), ca!), serverAddress, serverBulk);
        }
    }

    /// <summary>Akka addresses compare without a trailing slash and with the host's case folded (a URI in a certificate is normalised).</summary>
    public static bool SameAddress(string a, string b) =>
        string.Equals(a.TrimEnd('/'), b.TrimEnd('/'), StringComparison.OrdinalIgnoreCase);

    private static async Task ExpectOk(Stream stream, CancellationToken cancellation)
    {
        byte[] status = new byte[1];
        await stream.ReadExactlyAsync(status, cancellation).ConfigureAwait(false);
        if (status[0] != 0)
        {
            string reason = Encoding.UTF8.GetString(await ReadField(stream, cancellation).ConfigureAwait(false));
            throw new EnrollmentRefusedException($"the server refused this node: {ClusterAuthority.Printable(reason)}");
        }
    }

    internal static async Task WriteField(Stream stream, byte[] bytes, CancellationToken cancellation)
    {
        byte[] length = new byte[2];
        BinaryPrimitives.WriteUInt16LittleEndian(length, checked((ushort)bytes.Length));
        await stream.WriteAsync(length, cancellation).ConfigureAwait(false);
        await stream.WriteAsync(bytes, cancellation).ConfigureAwait(false);
    }

    /// <summary>A length-prefixed field, refused before allocation if longer than <see cref="MaxField"/>.</summary>
    internal static async Task<byte[]> ReadField(Stream stream, CancellationToken cancellation)
    {
        byte[] prefix = new byte[2];
        await stream.ReadExactlyAsync(prefix, cancellation).ConfigureAwait(false);
        int length = BinaryPrimitives.ReadUInt16LittleEndian(prefix);
        if (length > MaxField)
        {
            throw new InvalidDataException($"join handshake field of {length} bytes exceeds {MaxField}");
        }
        byte[] bytes = new byte[length];
        await stream.ReadExactlyAsync(bytes, cancellation).ConfigureAwait(false);
        return bytes;
    }
}

/// <summary>
/// The server's side of <see cref="Enrollment"/>: checks a joining node's token and issues its certificate.
/// <paramref name="addressInUse"/> tells whether an Akka address belongs to a current cluster member (a
/// certificate is never issued for another live node's address).
/// </summary>
public sealed class EnrollmentDesk(ClusterAuthority? authority, string serverAkkaAddress, Func<string> serverBulkEndpoint, Func<string, bool> addressInUse, ILoggingAdapter log)
{
    private long _issued, _refused;

    public long Issued => Interlocked.Read(ref _issued);
    public long Refused => Interlocked.Read(ref _refused);

    /// <summary>Runs the exchange after the magic; <paramref name="stream"/> is TLS unless --insecure.</summary>
    public async Task ServeAsync(Stream stream, string peer, CancellationToken cancellation)
    {
        byte[] hello = new byte[2];
        await stream.ReadExactlyAsync(hello, cancellation).ConfigureAwait(false);
        bool secure = authority is not null;
        if (hello[0] != Enrollment.Version)
        {
            await Refuse(stream, peer, $"join handshake version {hello[0]}, the server speaks {Enrollment.Version}", cancellation).ConfigureAwait(false);
            return;
        }
        if (hello[1] == 0 && secure)
        {
            await Refuse(stream, peer, "this cluster requires a join token (start the worker with --token or --token-file)", cancellation).ConfigureAwait(false);
            return;
        }
        await stream.WriteAsync(new byte[] { 0 }, cancellation).ConfigureAwait(false);
        await Enrollment.WriteField(stream, authority?.Certificate.RawData ?? [], cancellation).ConfigureAwait(false);
        await Enrollment.WriteField(stream, Encoding.UTF8.GetBytes(serverAkkaAddress), cancellation).ConfigureAwait(false);
        await Enrollment.WriteField(stream, Encoding.UTF8.GetBytes(serverBulkEndpoint()), cancellation).ConfigureAwait(false);
        await stream.FlushAsync(cancellation).ConfigureAwait(false);

        byte[] secret = await Enrollment.ReadField(stream, cancellation).ConfigureAwait(false);
        string name = Encoding.UTF8.GetString(await Enrollment.ReadField(stream, cancellation).ConfigureAwait(false));
        string address = Encoding.UTF8.GetString(await Enrollment.ReadField(stream, cancellation).ConfigureAwait(false));
        byte[] publicKey = await Enrollment.ReadField(stream, cancellation).ConfigureAwait(false);
        if (authority is null)
        {
            await stream.WriteAsync(new byte[] { 0 }, cancellation).ConfigureAwait(false);
            await Enrollment.WriteField(stream, [], cancellation).ConfigureAwait(false);
            await stream.FlushAsync(cancellation).ConfigureAwait(false);
            return;
        }
        if (!authority.Token.SecretEquals(secret))
        {
            await Refuse(stream, peer, "wrong join token", cancellation).ConfigureAwait(false);
            return;
        }
        if (addressInUse(address))
        {
            await Refuse(stream, peer, $"{ClusterAuthority.Printable(address)} is the address of a node that is still a cluster member", cancellation).ConfigureAwait(false);
            return;
        }
        X509Certificate2 certificate;
        try
        {
            certificate = authority.Issue(publicKey, ClusterNaming.WorkerRole, name, address);
        }
        catch (ArgumentException e)
        {
            await Refuse(stream, peer, e.Message, cancellation).ConfigureAwait(false);
            return;
        }
        using (certificate)
        {
            await stream.WriteAsync(new byte[] { 0 }, cancellation).ConfigureAwait(false);
            await Enrollment.WriteField(stream, certificate.RawData, cancellation).ConfigureAwait(false);
            await stream.FlushAsync(cancellation).ConfigureAwait(false);
        }
        Interlocked.Increment(ref _issued);
        log.Info("issued a worker certificate to {0} ({1}) from {2}", ClusterAuthority.Printable(name), ClusterAuthority.Printable(address), peer);
    }

    private async Task Refuse(Stream stream, string peer, string reason, CancellationToken cancellation)
    {
        Interlocked.Increment(ref _refused);
        log.Warning("refused to enroll a node from {0}: {1}", peer, reason);
        await stream.WriteAsync(new byte[] { 1 }, cancellation).ConfigureAwait(false);
        await Enrollment.WriteField(stream, Encoding.UTF8.GetBytes(reason), cancellation).ConfigureAwait(false);
        await stream.FlushAsync(cancellation).ConfigureAwait(false);
    }
}
