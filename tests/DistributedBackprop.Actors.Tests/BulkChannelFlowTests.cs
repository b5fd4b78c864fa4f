using System.Net;
using System.Net.Sockets;
using Akka.Actor;
using Akka.Configuration;
using Akka.TestKit;
using Akka.TestKit.Xunit2;
using DistributedBackprop.Actors.Transport;
using Xunit.Abstractions;

namespace DistributedBackprop.Actors.Tests;

/// <summary>
/// Flow control on the bulk channel must never hold an actor: a peer that stops reading fills the window
/// (max-frames-in-flight) and the socket buffers, and later frames wait beside the window, not in the sender.
/// </summary>
public sealed class BulkChannelFlowTests(ITestOutputHelper output) : TestKit(
    ConfigurationFactory.ParseString("dbp.bulk-channel { max-frames-in-flight = 2, send-timeout = 1s }").WithFallback(LocalTraining.LoadConfig()), output: output)
{
    [Fact]
    public void APeerThatStopsReading_NeverHoldsTheSendingActor_AndEveryFrameItCannotTakeIsReported()
    {
        using var peer = new NonReadingPeer();
        string endpoint = peer.Endpoint;
        BulkChannel channel = Courier.Get(Sys).StartChannel("127.0.0.1", 0, "127.0.0.1", identity: null, InboundPolicy.None());
        TestProbe report = CreateTestProbe(), recipient = CreateTestProbe();
        // 16 MB frames: the writer holds one (no socket buffer takes it), two fill the window, the others wait
        // beside it (at least eight of them, whenever the writer takes its first).
        const int frames = 12, floats = 4 << 20;
        IActorRef sender = Sys.ActorOf(Akka.Actor.Props.Create(() => new FrameSender(channel, endpoint, recipient.Ref, report.Ref)));

        sender.Tell(Enumerable.Repeat(floats, frames).ToArray());

        // With sends that wait for room, the 5th frame would hold the actor for send-timeout (1 s) and its
        // DeliveryFailed would reach the probe before "sent".
        report.ExpectMsg("sent", TimeSpan.FromSeconds(10));
        var failed = new List<DeliveryFailed>();
        while (failed.Count < frames - 4)
        {
            failed.Add(report.ExpectMsg<DeliveryFailed>(TimeSpan.FromSeconds(10)));
        }
        Assert.All(failed, f => Assert.Contains("no room among the 2 frames in flight", f.Reason));
        // In order: the frames that waited longest are reported first.
        Assert.Equal(failed.Select(f => ((ComputeGradients)f.Message).Step).Order(), failed.Select(f => ((ComputeGradients)f.Message).Step));
    }
}

/// <summary>
/// Sends a frame of each size it is told (steps 0, 1, …, continuing across messages) on the channel, then says
/// "sent". A DeliveryFailed for a frame refused while it sends goes to reportTo directly, before "sent".
/// </summary>
internal sealed class FrameSender : ReceiveActor
{
    public FrameSender(BulkChannel channel, string endpoint, IActorRef recipient, IActorRef reportTo)
    {
        int step = 0;
        Receive<int[]>(sizes =>
        {
            foreach (int floats in sizes)
            {
                channel.Send(endpoint, recipient, new ComputeGradients(step++, 0, 0, 0, 1, new float[floats]), reportTo);
            }
            reportTo.Tell("sent");
        });
    }
}

/// <summary>A listener on loopback that accepts one connection and never reads from it.</summary>
internal sealed class NonReadingPeer : IDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly List<Socket> _accepted = [];

    public NonReadingPeer()
    {
        // Small and fixed (no autotuning; accepted sockets inherit it): what the peer's kernel takes is bounded
        // whatever this host's TCP settings, so a large frame cannot be written out.
        _listener.Server.ReceiveBufferSize = 64 << 10;
        _listener.Start();
        _listener.BeginAcceptSocket(r => { lock (_accepted) _accepted.Add(_listener.EndAcceptSocket(r)); }, null);
        Endpoint = $"127.0.0.1:{((IPEndPoint)_listener.LocalEndpoint).Port}";
    }

    public string Endpoint { get; }

    public bool Connected
    {
        get { lock (_accepted) return _accepted.Count == 1; }
    }

    public void Dispose()
    {
        lock (_accepted)
        {
            _accepted.ForEach(s => s.Dispose());
        }
        _listener.Dispose();
    }
}

/// <summary>
/// The frames waiting beside a peer's full window are bounded by count and bytes: a sender far past what the
/// protocol ever has waiting (a bug) gets its frames refused at once, instead of the node holding them until it
/// runs out of memory. The peer accepts and never reads; a 64 MB frame first jams the writer (no socket buffer
/// takes it), so the window's two frames and what waits beside it are exact.
/// </summary>
public sealed class BulkChannelWaitingBoundTests(ITestOutputHelper output) : TestKit(
    ConfigurationFactory.ParseString("dbp.bulk-channel { max-frames-in-flight = 2, send-timeout = 1s, max-frames-waiting = 3, max-bytes-waiting = 10MB }")
        .WithFallback(LocalTraining.LoadConfig()), output: output)
{
    [Fact]
    public void FramesPastMaxFramesWaiting_AreReportedAtOnce_AndTheOnesWaitingAfterSendTimeout()
    {
        using var jammed = new JammedPeer(this);
        var (refusedAtOnce, timedOut) = jammed.Send([1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);

        // Steps 1 and 2 fill the window, 3–5 wait, 6–10 are refused while the sender is still sending.
        Assert.Equal([6, 7, 8, 9, 10], Steps(refusedAtOnce));
        Assert.All(refusedAtOnce, f => Assert.Contains("3 frames (0 MB) already wait for room (max-frames-waiting 3", f.Reason));
        Assert.Equal([3, 4, 5], Steps(timedOut));

        // Once they are reported, three may wait again.
        (refusedAtOnce, timedOut) = jammed.Send([1, 1, 1, 1]);
        Assert.Equal([14], Steps(refusedAtOnce));
        Assert.Equal([11, 12, 13], Steps(timedOut));
    }

    [Fact]
    public void AFramePastMaxBytesWaiting_IsReportedAtOnce_ButTheFirstWaitingFrameIsTakenWhateverItsSize()
    {
        using var jammed = new JammedPeer(this);
        // Step 3 (12 MB) waits alone although it is over the 10 MB; step 4 (4 bytes of floats) would make more.
        var (refusedAtOnce, timedOut) = jammed.Send([1, 1, 3 << 20, 1, 1]);

        Assert.Equal([4, 5], Steps(refusedAtOnce));
        Assert.All(refusedAtOnce, f => Assert.Contains("1 frames (12.6 MB) already wait for room", f.Reason));
        Assert.Equal([3], Steps(timedOut));

        // Its bytes left with it: two small frames wait together now.
        (refusedAtOnce, timedOut) = jammed.Send([1, 1]);
        Assert.Empty(refusedAtOnce);
        Assert.Equal([6, 7], Steps(timedOut));
    }

    private static IEnumerable<long> Steps(IEnumerable<DeliveryFailed> reports) => reports.Select(f => ((ComputeGradients)f.Message).Step);

    /// <summary>
    /// A peer that never reads, its connection's writer jammed by a 64 MB frame (step 0) that no socket buffer takes
    /// (the listener's receive buffer is small, which also turns its autotuning off), so the window's two frames
    /// and what waits beside them are exact.
    /// </summary>
    private sealed class JammedPeer : IDisposable
    {
        private const int JamFloats = 16 << 20;
        private readonly NonReadingPeer _peer = new();
        private readonly TestProbe _report;
        private readonly IActorRef _sender;
        private bool _windowFull;

        public JammedPeer(BulkChannelWaitingBoundTests test)
        {
            BulkChannel channel = Courier.Get(test.Sys).StartChannel("127.0.0.1", 0, "127.0.0.1", identity: null, InboundPolicy.None());
            _report = test.CreateTestProbe();
            TestProbe recipient = test.CreateTestProbe();
            string endpoint = _peer.Endpoint;
            _sender = test.Sys.ActorOf(Akka.Actor.Props.Create(() => new FrameSender(channel, endpoint, recipient.Ref, _report.Ref)));
            _sender.Tell(new[] { JamFloats });
            _report.ExpectMsg("sent", TimeSpan.FromSeconds(10));
            // The writer connects after it took the jam from the window, and never finishes writing it.
            test.AwaitCondition(() => _peer.Connected, TimeSpan.FromSeconds(10));
        }

        /// <summary>
        /// Sends frames of <paramref name="sizes"/> floats: those refused at once (the reason says so, and every one
        /// came before the sender finished), and those that waited and were reported after send-timeout. The window's
        /// two frames are never reported while the peer stays connected.
        /// </summary>
        public (List<DeliveryFailed> RefusedAtOnce, List<DeliveryFailed> TimedOut) Send(int[] sizes)
        {
            _sender.Tell(sizes);
            var beforeSent = new List<DeliveryFailed>();
            for (object? message = _report.ReceiveOne(TimeSpan.FromSeconds(10)); message is not "sent"; message = _report.ReceiveOne(TimeSpan.FromSeconds(10)))
            {
                beforeSent.Add(Assert.IsType<DeliveryFailed>(message));
            }
            var reports = new List<DeliveryFailed>(beforeSent);
            // The first frames after the jam fill the window and stay there; every later one is reported.
            int reported = _windowFull ? sizes.Length : sizes.Length - 2;
            _windowFull = true;
            while (reports.Count < reported)
            {
                reports.Add(_report.ExpectMsg<DeliveryFailed>(TimeSpan.FromSeconds(10)));
            }
            List<DeliveryFailed> refused = reports.Where(f => f.Reason.Contains("already wait for room")).ToList();
            Assert.All(refused, f => Assert.Contains(f, beforeSent));
            List<DeliveryFailed> timedOut = reports.Where(f => f.Reason.Contains("no room among the 2 frames in flight")).ToList();
            Assert.Equal(reports.Count, refused.Count + timedOut.Count);
            return (refused, timedOut);
        }

        public void Dispose() => _peer.Dispose();
    }
}
