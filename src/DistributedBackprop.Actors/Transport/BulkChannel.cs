using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using Akka.Actor;
using Akka.Event;
using DistributedBackprop.Actors.Serialization;

namespace DistributedBackprop.Actors.Transport;

/// <summary>
/// The bulk tensor channel: plain TCP (TLS when configured) between nodes, beside Akka.Remote, for the
/// messages that carry parameter or gradient vectors. Akka.Remote keeps the control messages and the
/// cluster heartbeats, so megabytes of tensors never delay a heartbeat, never hit Akka's maximum frame
/// size, and travel as raw float32 at socket speed.
///
/// Frame: "DBPB", recipient actor path, sender actor path (UTF-8, 16-bit length each), two-letter
/// manifest, 64-bit payload length, then the <see cref="WireFormat"/> payload, streamed straight from and
/// into the float arrays. One outgoing connection per peer, written by one thread from a bounded queue
/// (<see cref="MaxFramesInFlight"/> per peer: a sender that gets further ahead waits — the flow control).
/// Received messages are delivered with <c>recipient.Tell(message, sender)</c> as if Akka had carried
/// them, so actors see one protocol whichever way a message travelled.
/// </summary>
public sealed class BulkChannel : IDisposable
{
    public const int MaxFramesInFlight = 8;
    private static readonly byte[] Magic = "DBPB"u8.ToArray();
    private const int SocketBuffer = 4 << 20;

    private readonly ExtendedActorSystem _system;
    private readonly ILoggingAdapter _log;
    private readonly X509Certificate2? _certificate;
    private readonly TcpListener _listener;
    private readonly ConcurrentDictionary<string, Outgoing> _outgoing = new();
    private readonly ConcurrentDictionary<string, IActorRef> _resolved = new();
    private readonly CancellationTokenSource _stop = new();
    private long _bytesSent, _bytesReceived;

    public BulkChannel(ExtendedActorSystem system, string bindHost, int port, string publicHost, X509Certificate2? certificate)
    {
        _system = system;
        _log = Logging.GetLogger(system, "bulk-channel");
        _certificate = certificate;
        IPAddress address = bindHost switch
        {
            "0.0.0.0" or "*" => IPAddress.Any,
            "::" => IPAddress.IPv6Any,
            _ => IPAddress.TryParse(bindHost, out IPAddress? literal) ? literal : Dns.GetHostAddresses(bindHost).First(a => a.AddressFamily == AddressFamily.InterNetwork),
        };
        _listener = new TcpListener(address, port);
        // Two processes must never share a port silently.
        _listener.Server.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, false);
        _listener.Start();
        Endpoint = $"{publicHost}:{((IPEndPoint)_listener.LocalEndpoint).Port}";
        _ = Task.Run(AcceptLoop);
    }

    /// <summary>host:port where peers reach this node's channel.</summary>
    public string Endpoint { get; }

    public long BytesSent => Interlocked.Read(ref _bytesSent);
    public long BytesReceived => Interlocked.Read(ref _bytesReceived);

    /// <summary>Pool the float arrays of received tensors come from.</summary>
    public FloatArrayPool Pool { get; } = new();

    /// <summary>
    /// Queues <paramref name="message"/> for <paramref name="recipient"/> on the node listening at
    /// <paramref name="endpoint"/>. If the frame cannot be delivered (the peer is unreachable even after one
    /// reconnect, or <see cref="MaxFramesInFlight"/> frames stay queued for 5 s), <paramref name="sender"/>
    /// receives <see cref="DeliveryFailed"/> — a frame is never lost silently.
    /// </summary>
    public void Send(string endpoint, IActorRef recipient, object message, IActorRef sender)
    {
        Outgoing connection = _outgoing.GetOrAdd(endpoint, e => new Outgoing(this, e));
        // Full paths with the actors' UIDs: the receiver resolves them to refs equal to the ones it knows.
        var frame = new Frame(Akka.Serialization.Serialization.SerializedActorPath(recipient), Akka.Serialization.Serialization.SerializedActorPath(sender), message, recipient, sender);
        bool queued;
        try
        {
            queued = connection.Queue.TryAdd(frame, TimeSpan.FromSeconds(5));
        }
        catch (InvalidOperationException)
        {
            queued = false; // the connection was closed (peer forgotten, channel disposed)
        }
        if (!queued)
        {
            Dropped(frame, $"{MaxFramesInFlight} frames queued for 5 s or the connection is closed");
        }
    }

    /// <summary>Closes the connection to a peer that left the cluster.</summary>
    public void Forget(string endpoint)
    {
        if (_outgoing.TryRemove(endpoint, out Outgoing? connection))
        {
            connection.Queue.CompleteAdding();
        }
    }

    private void Dropped(Frame frame, string reason)
    {
        _log.Warning("bulk channel: could not deliver a {0} to {1}: {2}", frame.Message.GetType().Name, frame.Recipient, reason);
        frame.SenderRef.Tell(new DeliveryFailed(frame.RecipientRef, frame.Message, reason));
    }

    /// <summary>host:port → (host, port); the host may be an IPv6 literal.</summary>
    internal static (string Host, int Port) ParseEndpoint(string endpoint)
    {
        int colon = endpoint.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(endpoint.AsSpan(colon + 1), System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out int port) || port is <= 0 or > 65535)
        {
            throw new ArgumentException($"'{endpoint}' is not a HOST:PORT endpoint");
        }
        return (endpoint[..colon].Trim('[', ']'), port);
    }

    private async Task AcceptLoop()
    {
        while (!_stop.IsCancellationRequested)
        {
            TcpClient client;
            try
            {
                client = await _listener.AcceptTcpClientAsync(_stop.Token).ConfigureAwait(false);
            }
            catch (Exception) when (_stop.IsCancellationRequested)
            {
                return;
            }
            catch (SocketException e)
            {
                _log.Warning("bulk channel accept failed: {0}", e.Message);
                continue;
            }
            var thread = new Thread(() => ReceiveLoop(client)) { IsBackground = true, Name = "dbp-bulk-receive" };
            thread.Start();
        }
    }

    private void ReceiveLoop(TcpClient client)
    {
        string peer = client.Client.RemoteEndPoint?.ToString() ?? "?";
        try
        {
            Configure(client);
            using Stream stream = Wrap(client.GetStream(), server: true, peer);
            // Small buffer: frame headers are batched, tensor payloads (larger) bypass it and go socket → array.
            using var buffered = new BufferedStream(stream, 1 << 16);
            var header = new byte[8];
            while (!_stop.IsCancellationRequested)
            {
                int first = buffered.ReadAtLeast(header.AsSpan(0, 4), 4, throwOnEndOfStream: false);
                if (first == 0)
                {
                    return; // the peer closed the connection
                }
                if (first < 4 || !header.AsSpan(0, 4).SequenceEqual(Magic))
                {
                    _log.Warning("bulk channel from {0}: bad frame magic, closing", peer);
                    return;
                }
                string recipient = ReadString(buffered, header);
                string sender = ReadString(buffered, header);
                buffered.ReadExactly(header.AsSpan(0, 2));
                string manifest = Encoding.ASCII.GetString(header, 0, 2);
                buffered.ReadExactly(header.AsSpan(0, 8));
                long length = BinaryPrimitives.ReadInt64LittleEndian(header);
                object message = WireFormat.Read(buffered, manifest, length, Pool.Rent);
                message = message switch
                {
                    ComputeGradients m => m with { Pool = Pool },
                    GradientsComputed m => m with { Pool = Pool },
                    _ => message,
                };
                Interlocked.Add(ref _bytesReceived, length + 16 + recipient.Length + sender.Length);
                Resolve(recipient).Tell(message, Resolve(sender));
            }
        }
        catch (Exception e)
        {
            // Whatever went wrong with this connection (a malformed frame, a reset), the process lives on:
            // the sender learns of undelivered frames, and the cluster of dead peers.
            if (!_stop.IsCancellationRequested)
            {
                _log.Warning("bulk channel from {0} closed: {1}", peer, e.Message);
            }
        }
        finally
        {
            client.Dispose();
        }
    }

    private IActorRef Resolve(string path) => _resolved.GetOrAdd(path, p => _system.Provider.ResolveActorRef(p));

    private static string ReadString(Stream stream, byte[] scratch)
    {
        stream.ReadExactly(scratch.AsSpan(0, 2));
        int length = BinaryPrimitives.ReadUInt16LittleEndian(scratch);
        var bytes = new byte[length];
        stream.ReadExactly(bytes);
        return Encoding.UTF8.GetString(bytes);
    }

    private static void Configure(TcpClient client)
    {
        client.NoDelay = true;
        client.SendBufferSize = SocketBuffer;
        client.ReceiveBufferSize = SocketBuffer;
    }

    /// <summary>TLS when a certificate is configured: both ends present the cluster certificate and accept only a peer with the same one.</summary>
    private Stream Wrap(NetworkStream stream, bool server, string peer)
    {
        if (_certificate is null)
        {
            return stream;
        }
        var ssl = new SslStream(stream, leaveInnerStreamOpen: false, (_, certificate, _, _) =>
            certificate is not null && certificate.GetCertHashString() == _certificate.GetCertHashString());
        if (server)
        {
            ssl.AuthenticateAsServer(_certificate, clientCertificateRequired: true, checkCertificateRevocation: false);
        }
        else
        {
            ssl.AuthenticateAsClient(peer.Split(':')[0], new X509CertificateCollection { _certificate }, checkCertificateRevocation: false);
        }
        return ssl;
    }

    public void Dispose()
    {
        _stop.Cancel();
        _listener.Stop();
        foreach (Outgoing connection in _outgoing.Values)
        {
            connection.Queue.CompleteAdding();
        }
    }

    private sealed record Frame(string Recipient, string Sender, object Message, IActorRef RecipientRef, IActorRef SenderRef);

    /// <summary>One peer's queue and its writer thread; (re)connects lazily, drops frames while the peer is unreachable.</summary>
    private sealed class Outgoing
    {
        private readonly BulkChannel _channel;
        private readonly string _endpoint;

        public Outgoing(BulkChannel channel, string endpoint)
        {
            _channel = channel;
            _endpoint = endpoint;
            new Thread(WriteLoop) { IsBackground = true, Name = $"dbp-bulk-send-{endpoint}" }.Start();
        }

        public BlockingCollection<Frame> Queue { get; } = new(MaxFramesInFlight);

        private void WriteLoop()
        {
            TcpClient? client = null;
            Stream? stream = null;
            var scratch = new byte[8];
            foreach (Frame frame in Queue.GetConsumingEnumerable())
            {
                // One retry on a fresh connection: a reset between steps must not cost a frame.
                for (int attempt = 0; ; attempt++)
                {
                    try
                    {
                        if (stream is null)
                        {
                            var (host, port) = ParseEndpoint(_endpoint);
                            client = new TcpClient();
                            Configure(client);
                            client.Connect(host, port);
                            stream = new BufferedStream(_channel.Wrap(client.GetStream(), server: false, _endpoint), 1 << 16);
                        }
                        Write(stream, frame, scratch);
                        break;
                    }
                    catch (Exception e)
                    {
                        stream?.Dispose();
                        client?.Dispose();
                        stream = null;
                        client = null;
                        if (attempt >= 1)
                        {
                            _channel.Dropped(frame, e.Message);
                            break;
                        }
                    }
                }
            }
            stream?.Dispose();
            client?.Dispose();
        }

        private void Write(Stream stream, Frame frame, byte[] scratch)
        {
            stream.Write(Magic);
            WriteString(stream, frame.Recipient, scratch);
            WriteString(stream, frame.Sender, scratch);
            stream.Write(Encoding.ASCII.GetBytes(WireFormat.Manifest(frame.Message)));
            var counting = new CountingStream(stream);
            // The length goes before the payload; counting it costs no copy (arrays are measured, not written).
            long length = PayloadLength(frame.Message);
            BinaryPrimitives.WriteInt64LittleEndian(scratch, length);
            stream.Write(scratch, 0, 8);
            WireFormat.Write(counting, frame.Message);
            if (counting.Written != length)
            {
                throw new InvalidOperationException($"payload of {frame.Message.GetType().Name} is {counting.Written} bytes, expected {length}");
            }
            if (Queue.Count == 0)
            {
                stream.Flush();
            }
            Interlocked.Add(ref _channel._bytesSent, length + 16 + frame.Recipient.Length + frame.Sender.Length);
        }

        private static void WriteString(Stream stream, string value, byte[] scratch)
        {
            byte[] bytes = Encoding.UTF8.GetBytes(value);
            BinaryPrimitives.WriteUInt16LittleEndian(scratch, (ushort)bytes.Length);
            stream.Write(scratch, 0, 2);
            stream.Write(bytes);
        }
    }

    /// <summary>Exact payload size of a message in <see cref="WireFormat"/>, without encoding it.</summary>
    internal static long PayloadLength(object message)
    {
        using var counter = new CountingStream(Stream.Null);
        WireFormat.Write(counter, message);
        return counter.Written;
    }

    /// <summary>Counts bytes written through it.</summary>
    private sealed class CountingStream(Stream inner) : Stream
    {
        public long Written { get; private set; }
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => Written;
        public override long Position { get => Written; set => throw new NotSupportedException(); }
        public override void Flush() => inner.Flush();
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count)
        {
            inner.Write(buffer, offset, count);
            Written += count;
        }

        public override void Write(ReadOnlySpan<byte> buffer)
        {
            inner.Write(buffer);
            Written += buffer.Length;
        }

        public override void WriteByte(byte value)
        {
            inner.WriteByte(value);
            Written++;
        }
    }
}
