using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Akka.Actor;
using Akka.Configuration;
using Akka.TestKit.Xunit2;
using DistributedBackprop.Actors.Transport;
using Xunit.Abstractions;

namespace DistributedBackprop.Actors.Tests;

/// <summary>
/// The bulk channel's pacing (<see cref="LinkPacing"/>): a worker node shares its link out among the peers it sends
/// the bulk of its bytes to, on real sockets.
/// </summary>
public sealed class LinkPacingTests(ITestOutputHelper output) : TestKit(
    ConfigurationFactory.ParseString("dbp.bulk-channel.link-rate = 100mbit").WithFallback(LocalTraining.LoadConfig()), output: output)
{
    [Theory]
    [InlineData("auto", null)]
    [InlineData(" AUTO ", null)]
    [InlineData("off", 0L)]
    [InlineData("0", 0L)]
    [InlineData("100mbit", 100_000_000L)]
    [InlineData("1gbit", 1_000_000_000L)]
    [InlineData("2.5gbit", 2_500_000_000L)]
    [InlineData("1000kbit", 1_000_000L)]
    public void Parse_ReadsAutoOffAndRates(string text, long? bits) => Assert.Equal(bits, LinkPacing.Parse(text, "x"));

    [Theory]
    [InlineData("fast")]
    [InlineData("100")]
    [InlineData("100mb")]
    [InlineData("999kbit")]
    [InlineData("20000gbit")]
    [InlineData("-1gbit")]
    [InlineData("1e3gbit")]
    public void Parse_RefusesWhatIsNotALinkRate_NamingTheSetting(string text)
    {
        var e = Assert.Throws<ArgumentException>(() => LinkPacing.Parse(text, "dbp.bulk-channel.link-rate"));
        Assert.StartsWith($"dbp.bulk-channel.link-rate: '{text}' is not a link rate", e.Message);
    }

    [Fact]
    public void BulkPeers_AreThosePastABulkFrameAndAQuarterOfTheBusiest()
    {
        const double slice = 300_000;
        Assert.Equal(3, LinkPacing.BulkPeers([slice, slice, 0.9 * slice]));
        // The server gets only control frames (a few KB), or one epoch's collect amid many steps' slices.
        Assert.Equal(3, LinkPacing.BulkPeers([slice, slice, slice, 4_000]));
        Assert.Equal(3, LinkPacing.BulkPeers([12 * slice, 12 * slice, 12 * slice, slice]));
        // Control frames only, or nothing yet: one share, the whole link.
        Assert.Equal(1, LinkPacing.BulkPeers([4_000, 2_000]));
        Assert.Equal(1, LinkPacing.BulkPeers([]));
        Assert.Equal(12_500_000UL / 3, LinkPacing.PerConnection(100_000_000, 3));
        // Nothing to share with one bulk peer (a single server's worker): unpaced.
        Assert.Equal(0UL, LinkPacing.PerConnection(100_000_000, 1));
        Assert.Equal(0UL, LinkPacing.PerConnection(100_000_000, 0));
        Assert.Equal(0UL, LinkPacing.PerConnection(0, 3));
    }

    [Fact]
    public void RecentBytes_DecayWithTheTimeConstant()
    {
        long tau = (long)(LinkPacing.RecentBytesTimeConstant.TotalSeconds * Stopwatch.Frequency);
        Assert.Equal(1000, LinkPacing.Decayed(1000, 0));
        Assert.Equal(1000 / Math.E, LinkPacing.Decayed(1000, tau), 6);
        Assert.Equal(1000, LinkPacing.Decayed(1000, -5)); // clocks read on two threads: never grows
    }

    [Fact]
    public void APacedChannel_SharesItsLinkAmongThePeersItSendsTensorsTo_AndTheKernelTakesTheRate()
    {
        using var a = new DrainingListener();
        using var b = new DrainingListener();
        BulkChannel channel = Courier.Get(Sys).StartChannel("127.0.0.1", 0, "127.0.0.1", identity: null, InboundPolicy.None(), paced: true);
        Assert.Equal(100_000_000, channel.LinkBitsPerSecond);
        var recipient = CreateTestProbe();
        // Tensors (1 MB frames) to both peers, then a control frame to a third: two bulk peers, each half the link. The
        // rates are read back from the kernel (SO_MAX_PACING_RATE of each connection's socket), not what was asked.
        using var c = new DrainingListener();
        SendTwoRoundsOfTensors(channel, a, b, recipient.Ref);
        channel.Send(c.Endpoint, recipient.Ref, new ComputeGradients(0, 0, 0, 0, 1, new float[8]), TestActor);
        AwaitAssert(() => Assert.True(c.Received > 0), TimeSpan.FromSeconds(20));
        IReadOnlyDictionary<string, ulong> pacing = channel.Pacing();
        Assert.Equal(100_000_000UL / 8 / 2, pacing[a.Endpoint]);
        Assert.Equal(100_000_000UL / 8 / 2, pacing[b.Endpoint]);
        Assert.Equal(100_000_000UL / 8 / 2, pacing[c.Endpoint]);
    }

    [Fact]
    public void TheServersChannel_IsNotPaced_WhateverItsPeers()
    {
        using var a = new DrainingListener();
        using var b = new DrainingListener();
        BulkChannel channel = Courier.Get(Sys).StartChannel("127.0.0.1", 0, "127.0.0.1", identity: null, InboundPolicy.None());
        Assert.Equal(0, channel.LinkBitsPerSecond);
        SendTwoRoundsOfTensors(channel, a, b, CreateTestProbe().Ref);
        Assert.Equal(0UL, channel.Pacing()[a.Endpoint]);
        Assert.Equal(0UL, channel.Pacing()[b.Endpoint]);
    }

    /// <summary>
    /// A 1 MB frame to each of <paramref name="a"/> and <paramref name="b"/>, twice, each round once both have the one
    /// before: a frame is paced by the peers counted when it is written, so the second round's are paced by both
    /// (until b's first frame is counted, a is a paced channel's only bulk peer, and unpaced).
    /// </summary>
    private void SendTwoRoundsOfTensors(BulkChannel channel, DrainingListener a, DrainingListener b, IActorRef recipient)
    {
        for (int round = 1; round <= 2; round++)
        {
            channel.Send(a.Endpoint, recipient, new ComputeGradients(round, 0, 0, 0, 1, new float[1 << 18]), TestActor);
            channel.Send(b.Endpoint, recipient, new ComputeGradients(round, 0, 0, 0, 1, new float[1 << 18]), TestActor);
            AwaitAssert(() => Assert.True(a.Received > round << 20 && b.Received > round << 20), TimeSpan.FromSeconds(20));
        }
    }

    /// <summary>Accepts one connection and reads everything sent on it.</summary>
    private sealed class DrainingListener : IDisposable
    {
        private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
        private long _received;
        private Socket? _accepted;

        public DrainingListener()
        {
            _listener.Start();
            Endpoint = $"127.0.0.1:{((IPEndPoint)_listener.LocalEndpoint).Port}";
            Task.Run(async () =>
            {
                _accepted = await _listener.AcceptSocketAsync();
                var buffer = new byte[1 << 16];
                int n;
                while ((n = await _accepted.ReceiveAsync(buffer)) > 0)
                {
                    Interlocked.Add(ref _received, n);
                }
            });
        }

        public string Endpoint { get; }

        public long Received => Interlocked.Read(ref _received);

        public void Dispose()
        {
            _accepted?.Dispose();
            _listener.Stop();
        }
    }
}
