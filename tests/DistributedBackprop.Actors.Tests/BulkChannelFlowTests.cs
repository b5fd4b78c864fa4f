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
    /// <summary>Sends its frames on the channel when told, then says so.</summary>
    private sealed class Sender : ReceiveActor
    {
        public Sender(BulkChannel channel, string endpoint, IActorRef recipient, IActorRef reportTo, int frames, int floats)
        {
            ReceiveAny(_ =>
            {
                for (int i = 0; i < frames; i++)
                {
                    // DeliveryFailed goes to reportTo directly: it must come after "sent", i.e. after this loop.
                    channel.Send(endpoint, recipient, new ComputeGradients(i, 0, 0, 0, 1, new float[floats]), reportTo);
                }
                reportTo.Tell("sent");
            });
        }
    }

    [Fact]
    public void APeerThatStopsReading_NeverHoldsTheSendingActor_AndEveryFrameItCannotTakeIsReported()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var accepted = new List<Socket>();
        listener.BeginAcceptSocket(r => { lock (accepted) accepted.Add(listener.EndAcceptSocket(r)); }, null); // accepts, never reads
        string endpoint = $"127.0.0.1:{((IPEndPoint)listener.LocalEndpoint).Port}";
        BulkChannel channel = Courier.Get(Sys).StartChannel("127.0.0.1", 0, "127.0.0.1", identity: null, InboundPolicy.None());
        TestProbe report = CreateTestProbe(), recipient = CreateTestProbe();
        // 16 MB frames: two fill the socket buffers, two more the window; the other eight wait beside it.
        const int frames = 12, floats = 4 << 20;
        IActorRef sender = Sys.ActorOf(Akka.Actor.Props.Create(() => new Sender(channel, endpoint, recipient.Ref, report.Ref, frames, floats)));

        sender.Tell("go");

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
        lock (accepted)
        {
            accepted.ForEach(s => s.Dispose());
        }
    }
}
