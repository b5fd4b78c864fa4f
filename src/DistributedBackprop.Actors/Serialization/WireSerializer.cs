using System.Runtime.Serialization;
using Akka.Actor;
using Akka.Serialization;

namespace DistributedBackprop.Actors.Serialization;

/// <summary>
/// Akka's serializer for every <see cref="IWireMessage"/> (bound in cluster-config/*.hocon): the
/// <see cref="WireFormat"/> byte layout with its two-letter manifest. No message type may fall back to
/// Akka's JSON serializer (~20 bytes per float, and it lets a peer name types to instantiate).
///
/// In cluster mode (<c>dbp.wire.accept-on-akka-remote = off</c>) it refuses to read any protocol message:
/// there the protocol travels only on the bulk channel, where a message's sender is the authenticated
/// connection, whereas an Akka envelope's sender path is whatever the sending node wrote. (With
/// serialize-messages off, Akka calls this only for bytes that arrived from another node.)
/// </summary>
public sealed class WireSerializer(ExtendedActorSystem system) : SerializerWithStringManifest(system)
{
    private readonly bool _acceptOnAkkaRemote = system.Settings.Config.GetBoolean("dbp.wire.accept-on-akka-remote", true);

    /// <summary>Serializer id; the same on every node.</summary>
    public const int Id = 4242;

    public override int Identifier => Id;

    /// <summary>Every message type this serializer handles (tests check each round-trips).</summary>
    public static IReadOnlyCollection<Type> MessageTypes => WireFormat.MessageTypes;

    public override string Manifest(object o) => WireFormat.Manifest(o);

    public override byte[] ToBinary(object obj)
    {
        using var stream = new MemoryStream();
        WireFormat.Write(stream, obj);
        return stream.ToArray();
    }

    public override object FromBinary(byte[] bytes, string manifest)
    {
        if (!_acceptOnAkkaRemote)
        {
            throw new SerializationException($"refused a '{Security.ClusterAuthority.Printable(manifest)}' message ({bytes.Length} bytes) on Akka.Remote: protocol messages travel on the authenticated bulk channel only");
        }
        using var stream = new MemoryStream(bytes, writable: false);
        return WireFormat.Read(stream, manifest, bytes.Length);
    }
}
