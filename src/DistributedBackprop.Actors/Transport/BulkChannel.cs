using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using Akka.Actor;
using Akka.Event;
using DistributedBackprop.Actors.Security;
using DistributedBackprop.Actors.Serialization;

namespace DistributedBackprop.Actors.Transport;

/// <summary>Limits of the bulk channel, read once from the HOCON block <c>dbp.bulk-channel</c>.</summary>
public sealed record BulkChannelSettings(int MaxConnections, int MaxPendingHandshakes, TimeSpan HandshakeTimeout, TimeSpan IdleTimeout,
    int MaxFramesInFlight, TimeSpan SendTimeout, TimeSpan ConnectTimeout, int MaxPathBytes)
{
    /// <summary>The node's link in bits per second, which the connections' pacing shares out (<see cref="LinkPacing"/>); null: detect it; 0: no pacing.</summary>
    public long? LinkBitsPerSecond { get; init; }

    /// <summary>Frames that may wait beside a peer's full window; one more is reported undeliverable at once.</summary>
    public int MaxFramesWaiting { get; init; } = 65536;

    /// <summary>Payload bytes that may wait beside a peer's full window (the first waiting frame is taken whatever its size).</summary>
    public long MaxBytesWaiting { get; init; } = 2L << 30;

    public static BulkChannelSettings From(Akka.Configuration.Config config)
    {
        Akka.Configuration.Config c = config.GetConfig("dbp.bulk-channel") ?? throw new InvalidOperationException("dbp.bulk-channel is missing from the configuration");
        return new BulkChannelSettings(c.GetInt("max-connections"), c.GetInt("max-pending-handshakes"), c.GetTimeSpan("handshake-timeout"),
            c.GetTimeSpan("idle-timeout"), c.GetInt("max-frames-in-flight"), c.GetTimeSpan("send-timeout"), c.GetTimeSpan("connect-timeout"), c.GetInt("max-path-bytes"))
        {
            LinkBitsPerSecond = LinkPacing.Parse(c.GetString("link-rate", "auto"), "dbp.bulk-channel.link-rate"),
            MaxFramesWaiting = c.GetInt("max-frames-waiting") is int frames and >= 1 ? frames
                : throw new ArgumentException($"dbp.bulk-channel.max-frames-waiting: must be at least 1, got {c.GetInt("max-frames-waiting")}"),
            MaxBytesWaiting = c.GetByteSize("max-bytes-waiting") is long bytes and >= 0 ? bytes
                : throw new ArgumentException("dbp.bulk-channel.max-bytes-waiting: must be a size of 0 bytes or more (e.g. 2GiB)"),
        };
    }
}

/// <summary>
/// The bulk channel: TCP between nodes, beside Akka.Remote, for every protocol message between nodes
/// (tensors and control alike). Akka.Remote keeps membership, heartbeats and DeathWatch, so megabytes
/// of tensors never delay a heartbeat nor hit Akka's frame size, and travel as raw float32.
///
/// Security (docs/architecture.md, "Security"). With a <see cref="NodeIdentity"/> every connection is
/// mutual TLS against the cluster CA, and the identity of a frame's sender is the certificate of the
/// connection it came on: a frame whose sender path is not at the certificate's Akka address is refused.
/// A connection without a client certificate may only run the join handshake (<see cref="Enrollment"/>),
/// and only where an <see cref="EnrollmentDesk"/> is given (the server). What may arrive is a closed list
/// (<see cref="InboundPolicy"/>: manifest, recipient, peer role, size limit checked before allocating);
/// anything else, a malformed frame, a stalled handshake or an idle connection closes that one connection,
/// is counted and logged, and the node goes on. Connections and pending handshakes are capped.
///
/// Frame: "DBPB", recipient actor path, sender actor path (UTF-8, 16-bit length each), two-letter
/// manifest, 64-bit payload length, then the <see cref="WireFormat"/> payload, streamed straight from and
/// into the float arrays. One outgoing connection per peer, written by one thread from a bounded queue
/// (max-frames-in-flight per peer, the flow control: frames beyond it wait beside the queue in order, and a
/// streaming loop off the actors may wait for room instead; see <see cref="Send"/>).
/// Received messages are delivered with <c>recipient.Tell(message, sender)</c>.
/// </summary>
public sealed class BulkChannel : IDisposable
{
    private static readonly byte[] Magic = "DBPB"u8.ToArray();
    private const int SocketBuffer = 4 << 20;
    // Bytes moved per system call under TLS (records are 16 KB); per connection, so a flood of handshakes stays small.
    private const int TlsIoBuffer = 256 << 10;

    private readonly ExtendedActorSystem _system;
    private readonly ILoggingAdapter _log;
    private readonly NodeIdentity? _identity;
    private readonly SslStreamCertificateContext? _certificateContext;
    private readonly InboundPolicy _policy;
    private readonly EnrollmentDesk? _desk;
    private readonly BulkChannelSettings _settings;
    private readonly TcpListener _listener;
    // Lazy: GetOrAdd may run its factory twice under a race, and an Outgoing starts a thread and a timer;
    // only the one stored is ever created.
    private readonly ConcurrentDictionary<string, Lazy<Outgoing>> _outgoing = new();
    private readonly BoundedCache<string, IActorRef> _actors;
    private readonly CancellationTokenSource _stop = new();
    private readonly LinkedList<CancellationTokenSource> _handshaking = new();
    private long _bytesSent, _bytesReceived, _refusals;
    private int _open;

    /// <param name="paced">
    /// Each connection paced at the link's share of each bulk peer (<see cref="BulkPeers"/>): for a worker node, whose
    /// slices go to nodes that other workers send to at the same time (shards, the server). The server's channel is
    /// not paced: each worker it sends θ to hears from it alone, and pacing its connections, even each at the link's
    /// rate, made the step slower (`bench/network-sim.sh --workers 4 --shards 1 --rate 1gbit --epochs 2`: 66–69 ms a
    /// step against 59–62 ms unpaced).
    /// </param>
    public BulkChannel(ExtendedActorSystem system, string bindHost, int port, string publicHost, NodeIdentity? identity, InboundPolicy policy, EnrollmentDesk? desk = null, bool paced = false)
    {
        _system = system;
        _actors = new BoundedCache<string, IActorRef>(system.Provider.ResolveActorRef);
        _log = Logging.GetLogger(system, "bulk-channel");
        _identity = identity;
        _certificateContext = identity is null ? null : SslStreamCertificateContext.Create(identity.Certificate, additionalCertificates: null, offline: true);
        _policy = policy;
        _desk = desk;
        _settings = BulkChannelSettings.From(system.Settings.Config);
        _listener = new TcpListener(BindAddress(bindHost), port);
        if (paced)
        {
            // SO_MAX_PACING_RATE is Linux's: elsewhere the link stays 0, and nothing is paced.
            LinkBitsPerSecond = OperatingSystem.IsLinux() ? _settings.LinkBitsPerSecond ?? LinkPacing.Detect(BindAddress(bindHost)) : 0;
            string source = !OperatingSystem.IsLinux() ? "pacing needs Linux"
                : _settings.LinkBitsPerSecond is not null ? "dbp.bulk-channel.link-rate"
                : LinkBitsPerSecond > 0 ? "as the interface reports it" : "no Ethernet interface of 100 Mbit/s or more reports its speed";
            _log.Info(LinkBitsPerSecond > 0
                ? $"bulk channel: a link of {LinkBitsPerSecond / 1e6:0.#} Mbit/s ({source}), each connection paced at its share of each bulk peer"
                : $"bulk channel: not paced ({source})");
        }
        // Two processes must never share a port silently.
        _listener.Server.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, false);
        try
        {
            _listener.Start(backlog: 128);
        }
        catch (SocketException e)
        {
            _listener.Dispose();
            throw Cluster.PortUnavailableException.For("--bulk-port", bindHost, port, e, e);
        }
        Endpoint = $"{publicHost}:{((IPEndPoint)_listener.LocalEndpoint).Port}";
        new Thread(AcceptLoop) { IsBackground = true, Name = "dbp-bulk-accept" }.Start();
    }

    /// <summary>host:port where peers reach this node's channel.</summary>
    public string Endpoint { get; }

    /// <summary>The link the connections' pacing shares out, in bits per second; 0: not paced (the server, link-rate off, no speed known, not Linux).</summary>
    public long LinkBitsPerSecond { get; }

    /// <summary>
    /// The peers this node sends the bulk of its bytes to now: those whose recent bytes (<see cref="Outgoing.RecentBytes"/>)
    /// are at least a bulk frame's and a quarter of the busiest peer's. A step's slices go to the same peers each
    /// step; control frames, and an epoch's collect to the server, stay below.
    /// </summary>
    internal int BulkPeers()
    {
        long now = Stopwatch.GetTimestamp();
        // Enumerated directly (no Count, no Values: both take every lock of the dictionary, and Values copies it);
        // peers beyond the first 256 are not counted (a node's bulk peers are the cluster's workers).
        Span<double> recent = stackalloc double[256];
        int peers = 0;
        foreach (KeyValuePair<string, Lazy<Outgoing>> connection in _outgoing)
        {
            if (connection.Value.IsValueCreated && peers < recent.Length)
            {
                recent[peers++] = connection.Value.Value.RecentBytes(now);
            }
        }
        return LinkPacing.BulkPeers(recent[..peers]);
    }

    /// <summary>What the kernel paces each outgoing connection at now (SO_MAX_PACING_RATE read back), by peer endpoint, in bytes per second (0: unpaced); for tests.</summary>
    internal IReadOnlyDictionary<string, ulong> Pacing() =>
        _outgoing.Where(c => c.Value.IsValueCreated).ToDictionary(c => c.Key, c => c.Value.Value.PacingInKernel());

    public InboundPolicy Policy => _policy;
    public long BytesSent => Interlocked.Read(ref _bytesSent);
    public long BytesReceived => Interlocked.Read(ref _bytesReceived);

    /// <summary>Connections closed and frames refused for what a peer sent (or failed to send in time).</summary>
    public long Refusals => Interlocked.Read(ref _refusals);

    /// <summary>Inbound connections open now (authenticated or still handshaking).</summary>
    public int OpenConnections => Volatile.Read(ref _open);

    /// <summary>Pool the float arrays of received tensors come from.</summary>
    public FloatArrayPool Pool { get; } = new();

    /// <summary>
    /// Queues <paramref name="message"/> for <paramref name="recipient"/> on the node listening at
    /// <paramref name="endpoint"/>, without waiting: an actor must stay responsive whatever the network does.
    /// When the connection's window (max-frames-in-flight) is full, the frame waits its turn in order beside it
    /// (<see cref="Outgoing.Enqueue"/>). With <paramref name="waitForRoom"/> — for a loop off the actors that
    /// streams many frames and wants the peer's pace (flow control) — the caller waits for room instead. If the
    /// frame cannot be delivered (the peer is unreachable even after one reconnect, its certificate is not the
    /// recipient node's, or no room came for send-timeout), <paramref name="sender"/> receives
    /// <see cref="DeliveryFailed"/> — a frame is never lost silently.
    /// </summary>
    public void Send(string endpoint, IActorRef recipient, object message, IActorRef sender, bool waitForRoom = false)
    {
        Address peer = recipient.Path.Address;
        Outgoing connection = ConnectionTo(endpoint, peer);
        if (!connection.Peer.Equals(peer))
        {
            // The endpoint now belongs to another node (a restarted worker): a fresh connection, checked for that node.
            Forget(endpoint);
            connection = ConnectionTo(endpoint, peer);
        }
        // Full paths with the actors' UIDs: the receiver resolves them to refs equal to the ones it knows.
        var frame = new Frame(Akka.Serialization.Serialization.SerializedActorPath(recipient), Akka.Serialization.Serialization.SerializedActorPath(sender), message, recipient, sender);
        if (!waitForRoom)
        {
            connection.Enqueue(frame);
            return;
        }
        bool queued;
        try
        {
            queued = connection.Queue.TryAdd(frame, _settings.SendTimeout);
        }
        catch (InvalidOperationException)
        {
            queued = false; // the connection was closed (peer forgotten, channel disposed)
        }
        if (!queued)
        {
            Dropped(frame, $"{_settings.MaxFramesInFlight} frames queued for {_settings.SendTimeout.TotalSeconds:0.#} s or the connection is closed");
        }
    }

    private Outgoing ConnectionTo(string endpoint, Address peer) =>
        _outgoing.GetOrAdd(endpoint, e => new Lazy<Outgoing>(() => new Outgoing(this, e, peer))).Value;

    /// <summary>Closes the connection to a peer that left the cluster.</summary>
    public void Forget(string endpoint)
    {
        if (_outgoing.TryRemove(endpoint, out Lazy<Outgoing>? connection))
        {
            connection.Value.Queue.CompleteAdding();
        }
    }

    /// <summary>Tells the frame's sender, and logs it within <see cref="_undeliveredLog"/>'s budget (a sender in a loop must not flood the log).</summary>
    private void Dropped(Frame frame, string reason)
    {
        if (_undeliveredLog.Take() is { } unlogged)
        {
            _log.Warning("bulk channel: could not deliver a {0} to {1}: {2}{3}", frame.Message.GetType().Name, frame.Recipient, reason,
                unlogged > 0 ? $" ({unlogged} more undelivered frames were not logged before this one)" : "");
        }
        frame.SenderRef.Tell(new DeliveryFailed(frame.RecipientRef, frame.Message, reason));
    }

    private readonly LogBudget _undeliveredLog = new(20, TimeSpan.FromSeconds(10));

    /// <summary>Counts and logs what a peer did wrong, within <see cref="_refusedLog"/>'s budget (a flood must not flood the log).</summary>
    private void Refused(string peer, string reason)
    {
        long count = Interlocked.Increment(ref _refusals);
        if (_refusedLog.Take() is { } unlogged)
        {
            _log.Warning("bulk channel: closed the connection from {0}: {1} ({2} refused so far{3})", peer, reason, count,
                unlogged > 0 ? $", {unlogged} of them not logged" : "");
        }
    }

    private readonly LogBudget _refusedLog = new(20, TimeSpan.FromSeconds(10));

    /// <summary>The address a bind host names: 0.0.0.0 or * for every IPv4 interface, :: for IPv6, a literal, or a host name's IPv4 address.</summary>
    public static IPAddress BindAddress(string bindHost) => bindHost switch
    {
        "0.0.0.0" or "*" => IPAddress.Any,
        "::" => IPAddress.IPv6Any,
        _ => IPAddress.TryParse(bindHost, out IPAddress? literal) ? literal : Dns.GetHostAddresses(bindHost).First(a => a.AddressFamily == AddressFamily.InterNetwork),
    };

    /// <summary>host:port → (host, port); the host may be an IPv6 literal.</summary>
    public static (string Host, int Port) ParseEndpoint(string endpoint)
    {
        int colon = endpoint.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(endpoint.AsSpan(colon + 1), System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out int port) || port is <= 0 or > 65535)
        {
            throw new ArgumentException($"'{endpoint}' is not a HOST:PORT endpoint");
        }
        return (endpoint[..colon].Trim('[', ']'), port);
    }

    /// <summary>
    /// Accepts on a thread of its own and admits each connection on another, all with blocking calls. Why not
    /// async: .NET on Linux turns a socket non-blocking for good at its first asynchronous call, and from then
    /// on emulates every blocking call on it through epoll — a readiness event wakes the sockets thread, which
    /// queues the read to the thread pool, which does it and wakes the caller: three threads woken per read that
    /// waits, instead of one. A connection's receive thread waits for most of its reads, so with the async
    /// handshake that cost a worker node 45–55 % of a core at 100 Mbit/s (thread pool and sockets thread,
    /// measured by bench/host-cpu.py's per-thread sampling). Sockets here never see an asynchronous call.
    /// </summary>
    private void AcceptLoop()
    {
        while (!_stop.IsCancellationRequested)
        {
            TcpClient client;
            try
            {
                client = _listener.AcceptTcpClient();
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
            string peer;
            try
            {
                peer = client.Client.RemoteEndPoint?.ToString() ?? "?";
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                client.Dispose(); // reset before it was looked at: on this thread, an escaped exception would end the process
                continue;
            }
            if (Interlocked.Increment(ref _open) > _settings.MaxConnections)
            {
                Interlocked.Decrement(ref _open);
                client.Dispose();
                Refused(peer, $"more than {_settings.MaxConnections} open connections");
                continue;
            }
            // At most max-pending-handshakes connections may be unauthenticated at once. When full, the oldest
            // is dropped, not the newcomer: a flood of idle sockets cannot lock out a node that completes its
            // handshake promptly.
            var deadline = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
            deadline.CancelAfter(_settings.HandshakeTimeout);
            LinkedListNode<CancellationTokenSource> slot;
            lock (_handshaking)
            {
                slot = _handshaking.AddLast(deadline);
                if (_handshaking.Count > _settings.MaxPendingHandshakes)
                {
                    CancellationTokenSource oldest = _handshaking.First!.Value;
                    _handshaking.RemoveFirst();
                    oldest.Cancel();
                }
            }
            // The thread that admits a connection goes on to receive on it.
            try
            {
                new Thread(() => Admit(client, peer, slot)) { IsBackground = true, Name = "dbp-bulk-receive" }.Start();
            }
            catch (OutOfMemoryException)
            {
                // No thread to be had (a process limit): refuse this one rather than let the exception end the node.
                lock (_handshaking)
                {
                    if (slot.List is not null)
                    {
                        _handshaking.Remove(slot);
                    }
                }
                deadline.Dispose();
                client.Dispose();
                Interlocked.Decrement(ref _open);
                Refused(peer, "no thread to admit the connection");
            }
        }
    }

    /// <summary>
    /// Authenticates a new connection within the handshake deadline, then hands it to the join desk or to a receive
    /// thread (this one). Blocking calls: the deadline, or eviction by newer handshakes, closes the socket, which
    /// ends the call that waits on it.
    /// </summary>
    private void Admit(TcpClient client, string peer, LinkedListNode<CancellationTokenSource> slot)
    {
        bool receiving = false;
        CancellationTokenSource deadline = slot.Value;
        CancellationTokenRegistration abort = deadline.Token.Register(client.Dispose);
        Stream? receiveStream = null;
        PeerIdentity? receiveIdentity = null;
        bool receiveMagicConsumed = false;
        try
        {
            Configure(client);
            Stream stream = client.GetStream();
            PeerIdentity? identity = null;
            ReadBufferedStream? socket = null;
            if (_identity is not null)
            {
                socket = new ReadBufferedStream(stream, TlsIoBuffer);
                var ssl = new SslStream(socket, leaveInnerStreamOpen: false);
                ssl.AuthenticateAsServer(new SslServerAuthenticationOptions
                {
                    ServerCertificateContext = _certificateContext,
                    ClientCertificateRequired = true,
                    // No certificate: a node that has yet to enroll (checked below: it may only run the join handshake).
                    RemoteCertificateValidationCallback = (_, certificate, _, _) => certificate is null || _identity.Validate(certificate, out _) is not null,
                    EnabledSslProtocols = SslProtocols.Tls13 | SslProtocols.Tls12,
                    CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
                });
                identity = ssl.RemoteCertificate is { } presented ? _identity.Validate(presented, out _) : null;
                stream = ssl;
            }
            byte[] magic = new byte[4];
            stream.ReadExactly(magic);
            if (magic.AsSpan().SequenceEqual(Enrollment.Magic))
            {
                if (_desk is null)
                {
                    Refused(peer, "join handshake on a node that does not enroll others");
                    return;
                }
                // A join is rare and short: its socket may go asynchronous.
                _desk.ServeAsync(stream, peer, deadline.Token).GetAwaiter().GetResult();
                return;
            }
            if (!magic.AsSpan().SequenceEqual(Magic))
            {
                Refused(peer, "bad frame magic");
                return;
            }
            bool magicConsumed = true;
            if (socket is not null)
            {
                if (identity is null)
                {
                    Refused(peer, "frames need a certificate of this cluster");
                    return;
                }
                // The sender's key for this connection's records, inside TLS; acknowledged, so it sends no
                // record before this side has stopped reading TLS (SealedRecords).
                byte[] key = new byte[SealedRecords.KeyBytes];
                stream.ReadExactly(key);
                // Admitted before the acknowledgement: once the peer has it, it sends frames, so the deadline must
                // not close the connection after that (its first frames would be lost unreported).
                Admitted();
                stream.Write([1]);
                stream.Flush();
                // Records are read straight from the socket (a quarter-megabyte record in one or two calls,
                // opened in place) unless the TLS layer left bytes in the buffer.
                stream = new SealedReader(socket.Buffered == 0 ? socket.Inner : socket, key, stream);
                magicConsumed = false;
            }
            Admitted();
            receiving = true;
            (receiveStream, receiveIdentity, receiveMagicConsumed) = (stream, identity, magicConsumed);
        }
        catch (Exception e)
        {
            if (!_stop.IsCancellationRequested)
            {
                Refused(peer, deadline.IsCancellationRequested || e is OperationCanceledException ? $"no handshake within {_settings.HandshakeTimeout.TotalSeconds:0.#} s, or evicted by newer connections ({_settings.MaxPendingHandshakes} may handshake at once)" : $"handshake failed: {e.Message}");
            }
        }
        finally
        {
            lock (_handshaking)
            {
                if (slot.List is not null)
                {
                    _handshaking.Remove(slot);
                }
            }
            abort.Dispose();
            deadline.Dispose();
            if (!receiving)
            {
                client.Dispose();
                Interlocked.Decrement(ref _open);
            }
        }
        if (receiving)
        {
            ReceiveLoop(client, receiveStream!, receiveIdentity, peer, receiveMagicConsumed);
        }

        // Past this point neither the deadline nor an eviction may close the connection: the registration is
        // removed (waiting for a close already under way), and if one came first the connection is refused.
        void Admitted()
        {
            abort.Dispose();
            if (deadline.IsCancellationRequested)
            {
                throw new OperationCanceledException();
            }
        }
    }

    /// <param name="magicConsumed">the first frame's magic was read while admitting the connection (plain TCP).</param>
    private void ReceiveLoop(TcpClient client, Stream stream, PeerIdentity? identity, string peer, bool magicConsumed)
    {
        string who = identity is null ? peer : $"{identity} at {peer}";
        try
        {
            client.ReceiveTimeout = (int)_settings.IdleTimeout.TotalMilliseconds;
            // Small buffer: frame headers are batched, tensor payloads (larger) bypass it and go socket → array.
            using var buffered = new BufferedStream(stream, 1 << 16);
            var header = new byte[8];
            bool first = magicConsumed;
            while (!_stop.IsCancellationRequested)
            {
                if (!first)
                {
                    int got = buffered.ReadAtLeast(header.AsSpan(0, 4), 4, throwOnEndOfStream: false);
                    if (got == 0)
                    {
                        return; // the peer closed the connection
                    }
                    if (got < 4 || !header.AsSpan(0, 4).SequenceEqual(Magic))
                    {
                        Refused(who, "bad frame magic");
                        return;
                    }
                }
                first = false;
                string recipient = ReadPath(buffered, header);
                string sender = ReadPath(buffered, header);
                buffered.ReadExactly(header.AsSpan(0, 2));
                string manifest = Encoding.ASCII.GetString(header, 0, 2);
                buffered.ReadExactly(header.AsSpan(0, 8));
                long length = BinaryPrimitives.ReadInt64LittleEndian(header);
                if (Problem(recipient, sender, manifest, length, identity) is string problem)
                {
                    Refused(who, problem);
                    return;
                }
                object message = WireFormat.Read(buffered, manifest, length, Pool.Rent);
                message = message switch
                {
                    ComputeGradients m => m with { Pool = Pool },
                    GradientsComputed m => m with { Pool = Pool },
                    GradientSlice m => m with { Pool = Pool },
                    ParameterSlice m => m with { Pool = Pool },
                    _ => message,
                };
                Interlocked.Add(ref _bytesReceived, length + 16 + recipient.Length + sender.Length);
                _actors.Get(recipient).Tell(message, _actors.Get(sender));
            }
        }
        catch (Exception e)
        {
            // Whatever went wrong with this connection (a malformed frame, a reset, an idle peer), the process
            // lives on: the sender learns of undelivered frames, and the cluster of dead peers.
            if (!_stop.IsCancellationRequested)
            {
                if (e is System.Runtime.Serialization.SerializationException or InvalidDataException)
                {
                    Refused(who, e.Message);
                }
                else
                {
                    _log.Info("bulk channel from {0} closed: {1}", who, e.Message);
                }
            }
        }
        finally
        {
            try
            {
                stream.Dispose();
            }
            catch (Exception e) when (e is IOException or ObjectDisposedException)
            {
                // a reset connection: nothing to flush
            }
            client.Dispose();
            Interlocked.Decrement(ref _open);
        }
    }

    /// <summary>Why a frame header is refused before its payload is read, or null: recipient here and listed, sender at the certificate's address, size within the limit.</summary>
    private string? Problem(string recipient, string sender, string manifest, long length, PeerIdentity? identity)
    {
        if (!ActorPath.TryParse(recipient, out ActorPath? to) || !ActorPath.TryParse(sender, out ActorPath? from))
        {
            return "a frame names an actor path that does not parse";
        }
        if (!to.Address.Equals(_system.Provider.DefaultAddress))
        {
            return $"a frame for {to.Address}, which is not this node";
        }
        if (identity is not null && !Enrollment.SameAddress(from.Address.ToString(), identity.AkkaAddress))
        {
            return $"a frame claims to come from {from.Address}, but the connection's certificate is for {identity.AkkaAddress}";
        }
        return _policy.Check(manifest, to.ToStringWithoutAddress(), identity?.Role, length);
    }

    private string ReadPath(Stream stream, byte[] scratch)
    {
        stream.ReadExactly(scratch.AsSpan(0, 2));
        int length = BinaryPrimitives.ReadUInt16LittleEndian(scratch);
        if (length > _settings.MaxPathBytes)
        {
            throw new InvalidDataException($"an actor path of {length} bytes exceeds {_settings.MaxPathBytes}");
        }
        var bytes = new byte[length];
        stream.ReadExactly(bytes);
        try
        {
            return new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(bytes);
        }
        catch (DecoderFallbackException)
        {
            throw new InvalidDataException("an actor path is not UTF-8");
        }
    }

    private static void Configure(TcpClient client)
    {
        client.NoDelay = true;
        client.SendBufferSize = SocketBuffer;
        client.ReceiveBufferSize = SocketBuffer;
    }

    /// <summary>The client side of a connection: mutual TLS with a server whose certificate is the <paramref name="peer"/> node's.</summary>
    private Stream Connect(TcpClient client, string endpoint, Address peer)
    {
        var (host, port) = ParseEndpoint(endpoint);
        // Blocking calls only, as on the accepting side (see AcceptLoop). Linux bounds a blocking connect by the
        // socket's send timeout (SO_SNDTIMEO); closing the socket at the deadline is the backstop. A handshake that
        // outlives its deadline is ended by closing the socket. (A host name's lookup is not bounded by either: the
        // endpoints the cluster hands out are addresses, or names a container network resolves locally.)
        client.SendTimeout = (int)_settings.ConnectTimeout.TotalMilliseconds;
        using (var connect = new CancellationTokenSource(_settings.ConnectTimeout + TimeSpan.FromSeconds(1)))
        using (connect.Token.Register(client.Dispose))
        {
            try
            {
                client.Connect(host, port);
            }
            catch (Exception e) when (connect.IsCancellationRequested)
            {
                throw new TimeoutException($"no connection to {endpoint} within {_settings.ConnectTimeout.TotalSeconds:0.#} s", e);
            }
        }
        client.SendTimeout = 0;
        Stream stream = client.GetStream();
        if (_identity is null)
        {
            return stream;
        }
        string? problem = null;
        var socket = new ReadBufferedStream(stream, TlsIoBuffer);
        var ssl = new SslStream(socket, leaveInnerStreamOpen: false);
        using var deadline = new CancellationTokenSource(_settings.HandshakeTimeout);
        using CancellationTokenRegistration abort = deadline.Token.Register(client.Dispose);
        try
        {
            ssl.AuthenticateAsClient(new SslClientAuthenticationOptions
            {
                TargetHost = "dbp",
                ClientCertificateContext = _certificateContext,
                RemoteCertificateValidationCallback = (_, certificate, _, _) =>
                {
                    PeerIdentity? identity = _identity.Validate(certificate, out problem);
                    if (identity is not null && !Enrollment.SameAddress(identity.AkkaAddress, peer.ToString()))
                    {
                        problem = $"the certificate at {endpoint} is {identity}, not node {peer}";
                        return false;
                    }
                    return identity is not null;
                },
                EnabledSslProtocols = SslProtocols.Tls13 | SslProtocols.Tls12,
                CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
            });
            // A fresh key for this connection's records, sent inside the authenticated TLS session; the
            // receiver's acknowledgement says it has stopped reading TLS.
            byte[] key = RandomNumberGenerator.GetBytes(SealedRecords.KeyBytes);
            ssl.Write(Magic);
            ssl.Write(key);
            ssl.Flush();
            byte[] acknowledged = new byte[1];
            ssl.ReadExactly(acknowledged);
            abort.Dispose(); // connected: the deadline no longer applies
            return new SealedWriter(socket.Inner, key, ssl);
        }
        catch (AuthenticationException e) when (problem is not null)
        {
            ssl.Dispose();
            throw new AuthenticationException(problem, e);
        }
        catch (Exception e) when (deadline.IsCancellationRequested && e is not AuthenticationException)
        {
            ssl.Dispose();
            throw new TimeoutException($"no TLS handshake with {endpoint} within {_settings.HandshakeTimeout.TotalSeconds:0.#} s", e);
        }
    }

    public void Dispose()
    {
        _stop.Cancel();
        _listener.Stop();
        foreach (Lazy<Outgoing> connection in _outgoing.Values)
        {
            connection.Value.Queue.CompleteAdding();
        }
    }

    private sealed record Frame(string Recipient, string Sender, object Message, IActorRef RecipientRef, IActorRef SenderRef);

    /// <summary>One peer's queue and its writer thread; (re)connects lazily, drops frames while the peer is unreachable.</summary>
    private sealed class Outgoing
    {
        private readonly BulkChannel _channel;
        private readonly string _endpoint;

        private readonly object _gate = new();
        private readonly object _refilling = new();

        private readonly object _loadGate = new();
        private double _recentBytes;
        private long _recentAt;

        /// <summary>Bytes sent on this connection lately: each frame's payload, decaying with <see cref="LinkPacing.RecentBytesTimeConstant"/>.</summary>
        public double RecentBytes(long now)
        {
            lock (_loadGate)
            {
                return LinkPacing.Decayed(_recentBytes, now - _recentAt);
            }
        }

        private void Sent(long payloadBytes, long now)
        {
            lock (_loadGate)
            {
                _recentBytes = LinkPacing.Decayed(_recentBytes, now - _recentAt) + payloadBytes;
                _recentAt = now;
            }
        }

        /// <summary>The connection's socket now (paced or not), and the pacing rate last set on it, bytes per second (0: unpaced).</summary>
        private Socket? _socket;
        private ulong _pacedAt;
        private bool _unpaceable;
        private const int SolSocket = 1, SoMaxPacingRate = 47;

        /// <summary>SO_MAX_PACING_RATE of the connection's socket as the kernel holds it, bytes per second (0: unpaced, or no connection).</summary>
        public ulong PacingInKernel()
        {
            if (Volatile.Read(ref _socket) is not { } socket)
            {
                return 0;
            }
            try
            {
                var value = new byte[8];
                int length = socket.GetRawSocketOption(SolSocket, SoMaxPacingRate, value);
                ulong rate = length == 4 ? BitConverter.ToUInt32(value) : BitConverter.ToUInt64(value);
                return rate is uint.MaxValue or ulong.MaxValue ? 0 : rate;
            }
            catch (ObjectDisposedException)
            {
                return 0; // closed since (a reconnect)
            }
        }
        private readonly Queue<(Frame Frame, long Since, long Bytes)> _waiting = new();
        private long _waitingBytes;
        private readonly Timer _expiry;

        public Outgoing(BulkChannel channel, string endpoint, Address peer)
        {
            _channel = channel;
            _endpoint = endpoint;
            Peer = peer;
            Queue = new BlockingCollection<Frame>(channel._settings.MaxFramesInFlight);
            // While the writer is stuck on a peer that does not read, frames waiting beside the window still
            // have to be reported when their send-timeout passes.
            _expiry = new Timer(_ => Refill(), null, TimeSpan.FromMilliseconds(250), TimeSpan.FromMilliseconds(250));
            new Thread(WriteLoop) { IsBackground = true, Name = $"dbp-bulk-send-{endpoint}" }.Start();
        }

        /// <summary>
        /// Queues a frame without waiting: into the window if it has room and nothing waits before it, else
        /// at the end of the frames waiting beside it (order kept), which move in as the writer frees room and
        /// are reported undeliverable after send-timeout. Waiting frames are bounded by what the protocol
        /// sends within send-timeout (a step's work or gradients per peer), not by the network, and beyond
        /// max-frames-waiting or max-bytes-waiting a frame is reported undeliverable at once.
        /// </summary>
        public void Enqueue(Frame frame)
        {
            string reason;
            lock (_gate)
            {
                if (_waiting.Count == 0 && TryAdd(frame, out _))
                {
                    return;
                }
                if (Queue.IsAddingCompleted)
                {
                    reason = "the connection is closed";
                }
                else
                {
                    long bytes = Measure(frame.Message, out string? unwritable);
                    if ((unwritable ?? TooManyWaiting(bytes)) is { } refusal)
                    {
                        reason = refusal;
                    }
                    else
                    {
                        _waiting.Enqueue((frame, Stopwatch.GetTimestamp(), bytes));
                        _waitingBytes += bytes;
                        return;
                    }
                }
            }
            _channel.Dropped(frame, reason);
        }

        /// <summary>The payload's length, or −1 with the reason if the wire format cannot write it (the writer would report it the same way).</summary>
        private static long Measure(object message, out string? unwritable)
        {
            try
            {
                unwritable = null;
                return PayloadLength(message);
            }
            catch (Exception e)
            {
                unwritable = e.Message;
                return -1;
            }
        }

        /// <summary>
        /// Why a frame of <paramref name="bytes"/> may not join the frames waiting, or null if it may. The protocol
        /// never has more than a few steps' frames waiting for one peer; a sender far past that is a bug, and
        /// its frames are refused here rather than held until the process runs out of memory.
        /// </summary>
        private string? TooManyWaiting(long bytes)
        {
            BulkChannelSettings limits = _channel._settings;
            if (_waiting.Count >= limits.MaxFramesWaiting || (_waiting.Count > 0 && _waitingBytes + bytes > limits.MaxBytesWaiting))
            {
                return $"{_waiting.Count} frames ({_waitingBytes / 1e6:0.#} MB) already wait for room (max-frames-waiting {limits.MaxFramesWaiting}, " +
                    $"max-bytes-waiting {limits.MaxBytesWaiting / 1e6:0.#} MB): the sender is far ahead of what the peer reads";
            }
            return null;
        }

        private bool TryAdd(Frame frame, out bool closed)
        {
            closed = false;
            try
            {
                return Queue.TryAdd(frame);
            }
            catch (InvalidOperationException)
            {
                closed = true; // CompleteAdding: the peer was forgotten or the channel disposed
                return false;
            }
        }

        /// <summary>
        /// Moves waiting frames into the window while it has room; reports those past send-timeout, or all once
        /// closed. The writer and the timer both call it: one at a time, so reports keep the frames' order.
        /// </summary>
        private void Refill()
        {
            lock (_refilling)
            {
                try
                {
                    RefillOnce();
                }
                catch (Exception e)
                {
                    // On the timer's thread an exception would end the process.
                    _channel._log.Error(e, "bulk channel: reporting frames that wait for {0} failed", _endpoint);
                }
            }
        }

        private void RefillOnce()
        {
            List<(Frame, string)>? failed = null;
            lock (_gate)
            {
                while (_waiting.Count > 0)
                {
                    var (frame, since, bytes) = _waiting.Peek();
                    if (Stopwatch.GetElapsedTime(since) > _channel._settings.SendTimeout)
                    {
                        (failed ??= []).Add((frame, $"no room among the {_channel._settings.MaxFramesInFlight} frames in flight for {_channel._settings.SendTimeout.TotalSeconds:0.#} s (the peer reads too slowly, or not at all)"));
                    }
                    else if (!TryAdd(frame, out bool closed))
                    {
                        if (!closed)
                        {
                            break;
                        }
                        (failed ??= []).Add((frame, "the connection is closed"));
                    }
                    _waiting.Dequeue();
                    _waitingBytes -= bytes;
                }
            }
            foreach (var (frame, reason) in failed ?? [])
            {
                _channel.Dropped(frame, reason);
            }
        }

        /// <summary>The node this connection must reach: the server's certificate must name it.</summary>
        public Address Peer { get; }

        public BlockingCollection<Frame> Queue { get; }

        private void WriteLoop()
        {
            TcpClient? client = null;
            Stream? stream = null;
            var scratch = new byte[8];
            foreach (Frame frame in Queue.GetConsumingEnumerable())
            {
                Refill(); // taking this frame made room in the window
                // One retry on a fresh connection: a reset between steps must not cost a frame.
                for (int attempt = 0; ; attempt++)
                {
                    try
                    {
                        if (stream is not null && PeerClosed(client!))
                        {
                            // The receiver closed an idle connection (or refused a frame): a frame written now
                            // would vanish into a dead socket. Reconnect first.
                            Close(stream, client);
                            stream = null;
                        }
                        if (stream is null)
                        {
                            client = new TcpClient();
                            Configure(client);
                            stream = new BufferedStream(_channel.Connect(client, _endpoint, Peer), 1 << 16);
                        }
                        long length = PayloadLength(frame.Message);
                        Pace(client!.Client, length);
                        Write(stream, frame, length, scratch);
                        break;
                    }
                    catch (Exception e)
                    {
                        Close(stream, client);
                        stream = null;
                        client = null;
                        if (attempt >= 1 || e is AuthenticationException)
                        {
                            _channel.Dropped(frame, e.Message);
                            break;
                        }
                    }
                }
            }
            Close(stream, client);
            // Closed: nothing more goes out; frames still waiting are reported.
            _expiry.Dispose();
            Refill();
        }

        /// <summary>
        /// Before each frame (<paramref name="payloadBytes"/> long): counted in this peer's recent bytes, and the socket
        /// paced at the link's share of each bulk peer (<see cref="LinkPacing"/>) whenever that share changed or the
        /// connection is new.
        /// </summary>
        private void Pace(Socket socket, long payloadBytes)
        {
            bool fresh = socket != _socket;
            Volatile.Write(ref _socket, socket);
            if (_channel.LinkBitsPerSecond <= 0 || _unpaceable)
            {
                return;
            }
            Sent(payloadBytes, Stopwatch.GetTimestamp());
            ulong rate = LinkPacing.PerConnection(_channel.LinkBitsPerSecond, _channel.BulkPeers());
            if (rate == _pacedAt && !fresh)
            {
                return;
            }
            try
            {
                // SO_MAX_PACING_RATE (Linux): the kernel spaces the connection's packets at this rate (all ones: unlimited).
                socket.SetRawSocketOption(SolSocket, SoMaxPacingRate, BitConverter.GetBytes(rate == 0 ? ulong.MaxValue : rate));
                _pacedAt = rate;
            }
            catch (Exception e) when (e is SocketException or PlatformNotSupportedException)
            {
                _unpaceable = true;
                _channel._log.Warning("bulk channel: cannot pace the connection to {0} ({1}); it sends unpaced", _endpoint, e.Message);
            }
        }

        /// <summary>This side never reads: a readable socket with nothing to read means the peer has closed it.</summary>
        private static bool PeerClosed(TcpClient client)
        {
            try
            {
                return client.Client.Poll(0, SelectMode.SelectRead) && client.Client.Available == 0;
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                return true;
            }
        }

        /// <summary>Closing flushes what is buffered, which fails on a connection the peer closed: nothing more to do then.</summary>
        private static void Close(Stream? stream, TcpClient? client)
        {
            try
            {
                stream?.Dispose();
            }
            catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException)
            {
                // the peer is gone; the frames in the buffer are reported by the caller
            }
            client?.Dispose();
        }

        private void Write(Stream stream, Frame frame, long length, byte[] scratch)
        {
            stream.Write(Magic);
            WriteString(stream, frame.Recipient, scratch);
            WriteString(stream, frame.Sender, scratch);
            stream.Write(Encoding.ASCII.GetBytes(WireFormat.Manifest(frame.Message)));
            var counting = new CountingStream(stream);
            // The length goes before the payload; counting it costs no copy (arrays are measured, not written).
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
