using System.Net.Sockets;
using Akka.Actor;
using Akka.Actor.Setup;

namespace DistributedBackprop.Actors.Cluster;

/// <summary>
/// A port this node must listen on is held by another socket. Akka's transport reports it as an exception
/// five aggregates deep, the bulk channel as a bare <see cref="SocketException"/>; both become this, named by
/// the option that sets the port.
/// </summary>
public sealed class PortInUseException(string message, int port, Exception inner) : Exception(message, inner)
{
    /// <summary>
    /// How many ports a node chooses free (port 0) and finds taken at its bind before it gives up: one is bad
    /// luck, several mean something else holds ports as fast as they are freed.
    /// </summary>
    public const int ChoicesBeforeGivingUp = 5;

    /// <summary>The port that was taken.</summary>
    public int Port { get; } = port;

    /// <summary>Whether <paramref name="e"/>, or any exception inside it, is a bind refused for an address in use.</summary>
    public static bool IsCause(Exception e) => e switch
    {
        SocketException { SocketErrorCode: SocketError.AddressAlreadyInUse } => true,
        AggregateException aggregate => aggregate.InnerExceptions.Any(IsCause),
        { InnerException: { } inner } => IsCause(inner),
        _ => false,
    };

    /// <summary>
    /// Starts a node's ActorSystem, whose remoting binds <paramref name="host"/>:<paramref name="port"/>; a port
    /// in use is reported as this exception (<paramref name="option"/> names the setting, e.g. "--port").
    /// </summary>
    public static ActorSystem CreateSystem(ActorSystemSetup setup, string host, int port, string option)
    {
        try
        {
            return ActorSystem.Create(ClusterNaming.SystemName, setup);
        }
        catch (Exception e) when (IsCause(e))
        {
            throw new PortInUseException($"{option}: {host}:{port} is already in use by another process", port, e);
        }
    }
}
