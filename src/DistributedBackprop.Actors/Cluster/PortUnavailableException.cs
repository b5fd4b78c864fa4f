using System.Net.Sockets;
using Akka.Actor;
using Akka.Actor.Setup;

namespace DistributedBackprop.Actors.Cluster;

/// <summary>
/// A port this node must listen on cannot be bound: another socket holds it, or the system refuses it (a port
/// below 1024 without the right). Akka's transport reports it as a <see cref="SocketException"/> five aggregates
/// deep, the bulk channel as a bare one; both become this, one line naming the option that sets the port.
/// </summary>
public sealed class PortUnavailableException(string message, int port, bool inUse, Exception inner) : Exception(message, inner)
{
    /// <summary>
    /// How many ports a node chooses free (port 0) and finds taken at its bind before it gives up: one is bad
    /// luck, several in a row mean something else takes ports as fast as they are freed.
    /// </summary>
    public const int ChoicesBeforeGivingUp = 5;

    /// <summary>The port that could not be bound.</summary>
    public int Port { get; } = port;

    /// <summary>Another socket holds the port (rather than the system refusing it).</summary>
    public bool InUse { get; } = inUse;

    /// <summary>The bind's refusal inside <paramref name="e"/> (or <paramref name="e"/> itself), if there is one.</summary>
    public static SocketException? BindRefusal(Exception e) => e switch
    {
        SocketException socket => socket,
        AggregateException aggregate => aggregate.InnerExceptions.Select(BindRefusal).FirstOrDefault(found => found is not null),
        { InnerException: { } inner } => BindRefusal(inner),
        _ => null,
    };

    /// <summary>The one line for <paramref name="option"/>'s <paramref name="host"/>:<paramref name="port"/> refused with <paramref name="refusal"/>.</summary>
    public static PortUnavailableException For(string option, string host, int port, SocketException refusal, Exception inner)
    {
        bool inUse = refusal.SocketErrorCode == SocketError.AddressAlreadyInUse;
        string why = inUse ? "is already in use by another process"
            : refusal.SocketErrorCode == SocketError.AccessDenied ? "cannot be bound: permission denied (ports below 1024 need the right to bind them)"
            : refusal.SocketErrorCode == SocketError.AddressNotAvailable ? $"cannot be bound: {host} is not an address of this machine (--bind-host, or akka.remote.dot-netty.tcp.hostname in the cluster config)"
            : $"cannot be bound ({refusal.SocketErrorCode})";
        return new PortUnavailableException($"{option}: {host}:{port} {why}", port, inUse, inner);
    }

    /// <summary>The failure after <see cref="ChoicesBeforeGivingUp"/> ports chosen free were each taken before the bind: not the user's port, so not a usage error.</summary>
    public static IOException NoneFree(string host, PortUnavailableException last) =>
        new($"{ChoicesBeforeGivingUp} ports chosen free on {host} were each taken by another process before this node could bind them (the last {last.Port}); something is taking ports as fast as they are freed", last);

    /// <summary>
    /// Binds <paramref name="host"/>:<paramref name="port"/> and lets it go, or throws this exception: a port is
    /// tried before a node starts what would have to be shut down again (an ActorSystem's cluster leaving can
    /// take seconds and log them) if it were refused.
    /// </summary>
    public static void Try(string host, int port, string option)
    {
        var trial = new TcpListener(Transport.BulkChannel.BindAddress(host), port);
        try
        {
            trial.Server.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, false);
            trial.Start();
        }
        catch (SocketException refusal)
        {
            throw For(option, host, port, refusal, refusal);
        }
        finally
        {
            trial.Stop();
        }
    }

    /// <summary>
    /// Starts a node's ActorSystem, whose remoting binds <paramref name="host"/>:<paramref name="port"/>; a bind
    /// refused is reported as this exception (<paramref name="option"/> names the setting, e.g. "--port").
    /// </summary>
    public static ActorSystem CreateSystem(ActorSystemSetup setup, string host, int port, string option)
    {
        // Tried first by itself: an ActorSystem whose remoting fails to bind terminates as it throws, and its
        // last words ("Remoting system has been terminated abruptly") can reach standard output after this
        // process's logger has stopped (2 runs in 20). Only a port taken in the instant between stays Akka's to find.
        Try(host, port, option);
        try
        {
            return ActorSystem.Create(ClusterNaming.SystemName, setup);
        }
        catch (Exception e) when (BindRefusal(e) is { } refusal)
        {
            throw For(option, host, port, refusal, e);
        }
    }
}
