using Akka.Actor;
using Akka.Serialization;

namespace DistributedBackprop.Actors.Serialization;

/// <summary>
/// Akka's serializer for every <see cref="IWireMessage"/> (bound in cluster-config/*.hocon): the
/// <see cref="WireFormat"/> byte layout with its two-letter manifest. No message type may fall back to
/// Akka's JSON serializer (~20 bytes per float, and it lets a peer name types to instantiate).
/// </summary>
public sealed class WireSerializer(ExtendedActorSystem system) : SerializerWithStringManifest(system)
{
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
        using var stream = new MemoryStream(bytes, writable: false);
        return WireFormat.Read(stream, manifest, bytes.Length);
    }
}
