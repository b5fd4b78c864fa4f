using System.Globalization;
using System.Net;
using Akka.Actor;
using DistributedBackprop.Actors;
using DistributedBackprop.Actors.Cluster;
using DistributedBackprop.Models;

namespace DistributedBackprop.Cli.Live;

/// <summary>One look at a running `dbp serve` node for the live page: members, the parameter server's counters, the newest checkpoint.</summary>
internal sealed class ClusterLook(ActorSystem system, string? checkpointPath)
{
    private CheckpointView? _checkpoint;
    private DateTime _checkpointWritten;

    public async Task<ClusterView> LookAsync(CancellationToken cancellation)
    {
        Akka.Cluster.ClusterEvent.CurrentClusterState state = Akka.Cluster.Cluster.Get(system).State;
        var members = state.Members
            .Select(m => new MemberView(m.Address.ToString(), m.Roles.Order(StringComparer.Ordinal).ToList(), m.Status.ToString(), !state.Unreachable.Contains(m)))
            .ToList();
        ServerCounters? counters = null;
        try
        {
            ServerStatistics s = await system.ActorSelection(ClusterNaming.ParameterServerPath)
                .Ask<ServerStatistics>(GetStatistics.Instance, TimeSpan.FromSeconds(1), cancellation).ConfigureAwait(false);
            counters = new ServerCounters(s.GlobalStep, s.Workers, s.StaleDropped, s.DuplicatesDropped, s.UnregisteredIgnored, s.Reassignments, s.Unauthorized, s.Speculations, s.Failed);
        }
        catch (Exception e) when (e is AskTimeoutException or ActorNotFoundException or TaskCanceledException)
        {
            // Not started yet, or stopping: the page keeps the last counters it had.
        }
        return new ClusterView(members, counters, Checkpoint());
    }

    /// <summary>The checkpoint file's step, read again only when the file changed.</summary>
    private CheckpointView? Checkpoint()
    {
        if (checkpointPath is null || !File.Exists(checkpointPath))
        {
            return _checkpoint;
        }
        DateTime written = File.GetLastWriteTimeUtc(checkpointPath);
        if (written != _checkpointWritten)
        {
            try
            {
                string step = SafeTensors.ReadMetadata(checkpointPath).GetValueOrDefault("global_step", "0");
                _checkpoint = new CheckpointView(checkpointPath, long.Parse(step, CultureInfo.InvariantCulture), new DateTimeOffset(written, TimeSpan.Zero));
                _checkpointWritten = written;
            }
            catch (Exception e) when (e is ModelFileException or IOException or FormatException)
            {
                // Being replaced right now (written to a temporary file, then renamed): next look.
            }
        }
        return _checkpoint;
    }

    /// <summary>
    /// --http [HOST:]PORT: loopback (127.0.0.1) unless a host is given; a non-loopback address only with
    /// <paramref name="allowRemote"/>, since the page has no authentication of its own.
    /// </summary>
    public static IPEndPoint ParseEndpoint(string text, bool allowRemote)
    {
        string host = "127.0.0.1", portText = text;
        int colon = text.LastIndexOf(':');
        if (colon >= 0)
        {
            host = text[..colon].Trim('[', ']');
            portText = text[(colon + 1)..];
        }
        if (!int.TryParse(portText, NumberStyles.None, CultureInfo.InvariantCulture, out int port) || port > 65535)
        {
            throw new Commands.UsageException($"--http: '{text}' is not [HOST:]PORT (e.g. 8080 or 127.0.0.1:8080)");
        }
        IPAddress address = host == "localhost" ? IPAddress.Loopback
            : IPAddress.TryParse(host, out IPAddress? parsed) ? parsed
            : throw new Commands.UsageException($"--http: '{host}' is not an IP address (use 127.0.0.1, or an interface's address with --http-allow-remote)");
        if (!IPAddress.IsLoopback(address) && !allowRemote)
        {
            throw new Commands.UsageException($"--http: {address} is not a loopback address and the page has no authentication (anyone who reaches it sees the run); add --http-allow-remote to serve it there anyway");
        }
        return new IPEndPoint(address, port);
    }
}
