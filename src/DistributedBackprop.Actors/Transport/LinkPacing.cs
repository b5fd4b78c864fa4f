using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.NetworkInformation;
using System.Text.RegularExpressions;

namespace DistributedBackprop.Actors.Transport;

/// <summary>
/// How fast the bulk channel lets each connection send, so that a node's flows together fit its link
/// (<c>dbp.bulk-channel.link-rate</c>, <c>--link-rate</c>). A step is an all-to-all burst: with shards on the worker
/// nodes each node sends θ's slice to every other worker and its gradient's slices to every other shard at once,
/// so every link receives from N − 1 senders together (incast). Unpaced, each flow probes for the whole link
/// (BBR's start-up sends at ~2.9 × its estimate), a shallow switch queue overflows, and the losses cost more
/// than the bytes: on the simulated network (`bench/network-sim.sh --workers 4 --shards 4 --rate 100mbit --mtu
/// 9000 --batch-size 2048 --epochs 2`, 20 ms queues) the step took 2.4–3.0 × its bound, with each connection
/// paced at the link's rate ÷ 3 1.10–1.17 ×. So each connection is paced (SO_MAX_PACING_RATE, the kernel's own
/// pacing) at the link's rate ÷ the number of peers this node sends the bulk of its bytes to
/// (<see cref="BulkPeers"/>).
/// </summary>
public static class LinkPacing
{
    /// <summary>A peer that was sent fewer recent bytes than this (control frames only) is not a bulk peer.</summary>
    public const long BulkFrameBytes = 64 << 10;

    /// <summary>How fast a connection's recent bytes decay: a few steps on a slow link, many on a fast one.</summary>
    public static readonly TimeSpan RecentBytesTimeConstant = TimeSpan.FromSeconds(1);

    /// <summary><paramref name="bytes"/> counted <paramref name="elapsedTicks"/> (Stopwatch) ago, decayed: bytes · e^(−t/τ).</summary>
    public static double Decayed(double bytes, long elapsedTicks) =>
        bytes * Math.Exp(-Math.Max(0, elapsedTicks) / (RecentBytesTimeConstant.TotalSeconds * Stopwatch.Frequency));

    /// <summary>
    /// How many of the peers, given their recent bytes, share the link: those sent at least <see cref="BulkFrameBytes"/>
    /// and a quarter of the busiest one's (a step's slices go to the same peers each step; control frames, and an
    /// epoch's collect to the server, stay below); at least 1.
    /// </summary>
    public static int BulkPeers(ReadOnlySpan<double> recentBytes)
    {
        double busiest = 0;
        foreach (double bytes in recentBytes)
        {
            busiest = Math.Max(busiest, bytes);
        }
        int peers = 0;
        foreach (double bytes in recentBytes)
        {
            if (bytes >= BulkFrameBytes && bytes >= busiest / 4)
            {
                peers++;
            }
        }
        return Math.Max(1, peers);
    }

    /// <summary>
    /// The setting's value: <c>auto</c> (null: the speed the interface of the channel's address reports), <c>off</c>
    /// (0: no pacing), or a rate such as <c>100mbit</c>, <c>1gbit</c>, <c>2.5gbit</c> (bits per second).
    /// </summary>
    public static long? Parse(string value, string setting)
    {
        string text = value.Trim().ToLowerInvariant();
        if (text == "auto")
        {
            return null;
        }
        if (text is "off" or "0")
        {
            return 0;
        }
        Match m = Regex.Match(text, @"^([0-9]+(?:\.[0-9]+)?)(k|m|g)bit$");
        double bits = m.Success ? double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture) * m.Groups[2].Value switch { "k" => 1e3, "m" => 1e6, _ => 1e9 } : 0;
        if (!m.Success || bits < 1e6 || bits > 1e13)
        {
            throw new ArgumentException($"{setting}: '{OneLine.Of(value)}' is not a link rate (auto, off, or 1mbit to 10000gbit, e.g. 100mbit, 1gbit, 2.5gbit)");
        }
        return (long)bits;
    }

    /// <summary><paramref name="value"/> as given (null: not given), once <see cref="Parse"/> has taken it: a bad one is an <see cref="ArgumentException"/> naming <paramref name="setting"/>.</summary>
    public static string? Checked(string? value, string setting)
    {
        if (value is not null)
        {
            Parse(value, setting);
        }
        return value;
    }

    /// <summary>
    /// The speed, in bits per second, that the Ethernet interface holding <paramref name="address"/> reports (for
    /// a wildcard address, the fastest Ethernet interface that is up); 0 when none reports one: then nothing is
    /// paced. Only Ethernet, and only 100 Mbit/s or more: loopback reports nothing, and tunnels (tun/tap, VPNs)
    /// report 10 Mbit/s whatever they carry; pacing below the real link would cost more than incast.
    /// </summary>
    public static long Detect(IPAddress address)
    {
        try
        {
            bool wildcard = address.Equals(IPAddress.Any) || address.Equals(IPAddress.IPv6Any);
            long best = 0;
            foreach (NetworkInterface nic in NetworkInterface.GetAllNetworkInterfaces())
            {
                if (nic.OperationalStatus != OperationalStatus.Up || nic.NetworkInterfaceType is not (NetworkInterfaceType.Ethernet or NetworkInterfaceType.GigabitEthernet or NetworkInterfaceType.FastEthernetT or NetworkInterfaceType.FastEthernetFx) || nic.Speed < 100_000_000)
                {
                    continue;
                }
                bool holds = nic.GetIPProperties().UnicastAddresses.Any(u => u.Address.Equals(address));
                if ((holds || wildcard) && nic.Speed > best)
                {
                    best = nic.Speed;
                }
            }
            return best;
        }
        catch (NetworkInformationException)
        {
            return 0;
        }
    }

    /// <summary>
    /// Bytes per second one connection may send: the link's share of each of <paramref name="bulkPeers"/>; 0 (unpaced)
    /// with one bulk peer or none, where there is nothing to share: the workers of a single server, each paced at its
    /// link's rate, made the step slower (`bench/network-sim.sh --workers 4 --shards 1 --rate 1gbit --epochs 2`:
    /// 62.8–65.2 ms in four runs against 60.8–62.3 ms unpaced in the same series).
    /// </summary>
    public static ulong PerConnection(long linkBitsPerSecond, int bulkPeers) =>
        linkBitsPerSecond <= 0 || bulkPeers < 2 ? 0 : (ulong)(linkBitsPerSecond / 8 / bulkPeers);
}
