using System.Collections.Concurrent;
using System.Security.Cryptography.X509Certificates;
using Akka.Actor;

namespace DistributedBackprop.Actors.Transport;

/// <summary>
/// Delivers the protocol's messages by the right road: to an actor in this process, a plain Tell (arrays
/// passed by reference, see docs/architecture.md); to an actor on another node, tensor-carrying messages
/// (<see cref="IsBulk"/>) over the <see cref="BulkChannel"/> when that node's channel endpoint is known,
/// and everything else through Akka.Remote. An ActorSystem extension: one per node.
/// </summary>
public sealed class Courier : IExtension
{
    private readonly ExtendedActorSystem _system;
    private readonly ConcurrentDictionary<Address, string> _endpoints = new();

    public Courier(ExtendedActorSystem system)
    {
        _system = system;
    }

    public static Courier Get(ActorSystem system) => system.WithExtension<Courier, CourierProvider>();

    /// <summary>The node's bulk channel, once started.</summary>
    public BulkChannel? Channel { get; private set; }

    public BulkChannel StartChannel(string bindHost, int port, string publicHost, X509Certificate2? certificate)
    {
        Channel ??= new BulkChannel(_system, bindHost, port, publicHost, certificate);
        _system.RegisterOnTermination(() => Channel.Dispose());
        return Channel;
    }

    /// <summary>Records where <paramref name="node"/>'s bulk channel listens.</summary>
    public void RegisterPeer(Address node, string endpoint) => _endpoints[node] = endpoint;

    public void ForgetPeer(Address node)
    {
        if (_endpoints.TryRemove(node, out string? endpoint))
        {
            Channel?.Forget(endpoint);
        }
    }

    /// <summary>Messages whose size grows with the model or the data.</summary>
    public static bool IsBulk(object message) => message is ComputeGradients or GradientsComputed or Cluster.TrainingDataChunk or Cluster.JoinAccepted;

    public void Send(IActorRef target, object message, IActorRef sender)
    {
        Address address = target.Path.Address;
        bool local = address.HasLocalScope || address.Equals(_system.Provider.DefaultAddress);
        if (!local && Channel is not null && IsBulk(message) && _endpoints.TryGetValue(address, out string? endpoint))
        {
            Channel.Send(endpoint, target, message, sender);
            return;
        }
        target.Tell(message, sender);
    }

    private sealed class CourierProvider : ExtensionIdProvider<Courier>
    {
        public override Courier CreateExtension(ExtendedActorSystem system) => new(system);
    }
}
