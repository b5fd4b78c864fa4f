using System.Collections.Concurrent;
using Akka.Actor;
using DistributedBackprop.Actors.Security;

namespace DistributedBackprop.Actors.Transport;

/// <summary>
/// Delivers the protocol's messages by the right road: to an actor in this process, a plain Tell (arrays
/// passed by reference, see docs/architecture.md); to an actor on another node, over the
/// <see cref="BulkChannel"/> — every protocol message, so each is authenticated by the connection it
/// arrives on (Akka.Remote carries only membership, heartbeats and DeathWatch, and refuses protocol
/// messages: see <see cref="Serialization.WireSerializer"/>). A node's channel endpoint is known from the
/// join handshake (the server's) or from the gatekeeper's admission (a worker's); a message for a node
/// whose endpoint is unknown is reported to its sender as <see cref="DeliveryFailed"/>. An ActorSystem
/// extension: one per node.
/// </summary>
public sealed class Courier : IExtension
{
    private readonly ExtendedActorSystem _system;
    private readonly ConcurrentDictionary<Address, string> _endpoints = new();
    private readonly BoundedCache<PeerActor, IActorRef?> _peers;

    public Courier(ExtendedActorSystem system)
    {
        _system = system;
        _peers = new BoundedCache<PeerActor, IActorRef?>(ResolveOnce);
    }

    public static Courier Get(ActorSystem system) => system.WithExtension<Courier, CourierProvider>();

    /// <summary>The node's bulk channel, once started.</summary>
    public BulkChannel? Channel { get; private set; }

    /// <param name="paced">a worker node: its bulk frames go to nodes that others send to at the same time (shards, the
    /// server), so each connection is paced at the link's share of each peer (<see cref="LinkPacing"/>).</param>
    public BulkChannel StartChannel(string bindHost, int port, string publicHost, NodeIdentity? identity, InboundPolicy policy, EnrollmentDesk? desk = null, bool paced = false)
    {
        Channel ??= new BulkChannel(_system, bindHost, port, publicHost, identity, policy, desk, paced);
        _system.RegisterOnTermination(() => Channel.Dispose());
        return Channel;
    }

    /// <summary>Records where <paramref name="node"/>'s bulk channel listens.</summary>
    public void RegisterPeer(Address node, string endpoint) => _endpoints[node] = endpoint;

    /// <summary>
    /// <paramref name="actor"/> with its node's bulk channel endpoint, for telling a third node where to reach it:
    /// this node's own channel for a local actor, "" in a process without a channel (local mode).
    /// </summary>
    public PeerActor Describe(IActorRef actor)
    {
        Address address = actor.Path.Address;
        string endpoint = IsLocal(address) ? Channel?.Endpoint ?? "" : _endpoints.GetValueOrDefault(address, "");
        // The full path with the node's address and the actor's UID, as the bulk channel's frames name actors.
        return new PeerActor(Akka.Serialization.Serialization.SerializedActorPath(actor), endpoint);
    }

    /// <summary>
    /// The actor a <see cref="PeerActor"/> names (told by an authenticated peer), with its node's endpoint
    /// recorded so messages to it take the bulk channel. Null if the path does not parse. Resolved once per
    /// peer: a shard names its workers every step.
    /// </summary>
    public IActorRef? Resolve(PeerActor peer) => _peers.Get(peer);

    private IActorRef? ResolveOnce(PeerActor peer)
    {
        if (!ActorPath.TryParse(peer.Path, out ActorPath? path))
        {
            return null;
        }
        if (!IsLocal(path.Address) && peer.Endpoint.Length > 0)
        {
            _endpoints[path.Address] = peer.Endpoint;
        }
        return _system.Provider.ResolveActorRef(peer.Path);
    }

    public void ForgetPeer(Address node)
    {
        if (_endpoints.TryRemove(node, out string? endpoint))
        {
            Channel?.Forget(endpoint);
        }
    }

    /// <summary>Whether <paramref name="node"/> is this node, or a node admitted with a bulk channel endpoint.</summary>
    public bool IsAdmitted(Address node) => IsLocal(node) || _endpoints.ContainsKey(node);

    public bool IsLocal(Address address) => address.HasLocalScope || address.Equals(_system.Provider.DefaultAddress);

    /// <summary>
    /// Delivers <paramref name="message"/> to <paramref name="target"/>: locally by Tell, to another node on the
    /// bulk channel without waiting (or, with <paramref name="waitForRoom"/>, waiting for the connection's flow
    /// control: only off the actors).
    /// </summary>
    public void Send(IActorRef target, object message, IActorRef sender, bool waitForRoom = false)
    {
        Address address = target.Path.Address;
        if (IsLocal(address) || Channel is null)
        {
            target.Tell(message, sender);
        }
        else if (_endpoints.TryGetValue(address, out string? endpoint))
        {
            Channel.Send(endpoint, target, message, sender, waitForRoom);
        }
        else
        {
            sender.Tell(new DeliveryFailed(target, message, $"no bulk channel endpoint is known for node {address}"));
        }
    }

    private sealed class CourierProvider : ExtensionIdProvider<Courier>
    {
        public override Courier CreateExtension(ExtendedActorSystem system) => new(system);
    }
}
