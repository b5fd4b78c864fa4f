using Akka;
using Akka.Actor;
using Akka.Event;

namespace DistributedBackprop.Actors.Cluster;

/// <summary>
/// Keeps a cluster node running through one failed outbound TLS handshake.
/// <para>
/// Akka.Remote 1.5.74 runs the node's CoordinatedShutdown when any TLS handshake it starts fails
/// (<c>TcpHandlers.UserEventTriggered</c>), and that includes a peer that closes the connection mid-handshake,
/// or a port that now belongs to another cluster's node. For example, the server may reconnect to a worker
/// that is dying, or to the port of a dead worker that another process took. The server's ActorSystem then
/// terminated under its run, and `dbp serve` waited for ever: telling the workers the run had failed was an Ask,
/// whose timeout needed the stopped system's scheduler. A CI run of the docker-compose suite hung after a worker's
/// kill in a way this explains (not proven to be it). Akka only logs the inbound counterpart
/// (akka.net#7939). The failed association is gated and retried by Akka itself, so the node has no reason to stop.
/// </para>
/// <para>
/// A task in the first phase of the node's coordinated shutdown holds a run begun for that reason. The node
/// really stops when it leaves the cluster, is removed from it (downed, cut off) or is stopped by this program
/// (<see cref="Terminate"/>); each releases the hold and the shutdown goes on as usual. Shutdowns for any
/// other reason are never held. Needs <see cref="NodeConfig"/> in the node's config, which
/// <see cref="NodeSettings.BuildConfig"/> sets.
/// </para>
/// </summary>
public sealed class TlsFailureHold : IExtension
{
    /// <summary>
    /// The config line a node needs for the hold: the first phase may last 20 days (it recovers when that runs
    /// out). Not longer: Akka's exit hook, if a config turned it on, waits for the sum of the phase timeouts with
    /// Task.Wait, which refuses more than 24.8 days. The hook is off (NodeSettings.BuildConfig): it would wait on
    /// a held shutdown inside the SIGTERM handler.
    /// </summary>
    public const string NodeConfig = "akka.coordinated-shutdown.phases.before-service-unbind.timeout = 20d";

    /// <summary>The reason Akka.Remote gives (an internal type, so it is known by name).</summary>
    private const string HandshakeFailureReason = "Akka.Remote.Transport.DotNetty.TlsHandshakeFailureReason";

    private readonly TaskCompletionSource<Done> _release = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private volatile bool _held;

    private TlsFailureHold(ExtendedActorSystem system)
    {
        var shutdown = CoordinatedShutdown.Get(system);
        shutdown.AddTask(CoordinatedShutdown.PhaseBeforeServiceUnbind, "dbp-hold-after-a-failed-outbound-tls-handshake", () =>
        {
            if (shutdown.ShutdownReason?.GetType().FullName != HandshakeFailureReason)
            {
                return Task.FromResult(Done.Instance);
            }
            _held = true;
            system.Log.Warning("kept this node running after a failed outbound TLS handshake (Akka asked it to shut down; the connection is retried)");
            return _release.Task;
        });
        // Left or downed: the cluster's own shutdown of this node must go through.
        Akka.Cluster.Cluster.Get(system).RegisterOnMemberRemoved(() => _release.TrySetResult(Done.Instance));
    }

    /// <summary>Whether a failed outbound handshake has asked this node to shut down (it kept running).</summary>
    public bool Held => _held;

    /// <summary>Installs the hold on a cluster node's ActorSystem (once; later calls return it).</summary>
    public static TlsFailureHold Install(ActorSystem system) => system.WithExtension<TlsFailureHold, Provider>();

    /// <summary>Stops a cluster node: releases the hold first, or a held shutdown would keep the node from terminating.</summary>
    public static Task Terminate(ActorSystem system)
    {
        if (system.HasExtension<TlsFailureHold>())
        {
            system.GetExtension<TlsFailureHold>()._release.TrySetResult(Done.Instance);
        }
        return system.Terminate();
    }

    private sealed class Provider : ExtensionIdProvider<TlsFailureHold>
    {
        public override TlsFailureHold CreateExtension(ExtendedActorSystem system) => new(system);
    }
}
