using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Runtime.Serialization;
using System.Text;
using Akka.Actor;
using Akka.Serialization;
using DistributedBackprop.Engine;
using DistributedBackprop.Network;

namespace DistributedBackprop.Actors.Serialization;

/// <summary>
/// The binary serializer every <see cref="IWireMessage"/> is bound to (see the HOCON in cluster-config/):
/// little-endian fixed-width fields, float arrays as raw little-endian float32 (4 bytes per value, no
/// per-element framing), strings as UTF-8 with a length prefix. The manifest names the message type from a
/// closed list, so a peer can never make this process instantiate an arbitrary type (unlike the JSON
/// fallback with type names). Malformed or truncated payloads raise <see cref="SerializationException"/>
/// naming the message type and what was wrong.
/// </summary>
public sealed class WireSerializer(ExtendedActorSystem system) : SerializerWithStringManifest(system)
{
    /// <summary>Serializer id; must be the same on every node.</summary>
    public const int Id = 4242;

    public override int Identifier => Id;

    private static readonly Dictionary<Type, string> Manifests = new()
    {
        [typeof(RegisterWorker)] = "RW",
        [typeof(WorkerAccepted)] = "WA",
        [typeof(ComputeGradients)] = "CG",
        [typeof(GradientsComputed)] = "GC",
        [typeof(TrainEpoch)] = "TE",
        [typeof(StepApplied)] = "SA",
        [typeof(EpochTrained)] = "ET",
        [typeof(TrainingFailed)] = "TF",
        [typeof(SaveCheckpoint)] = "SC",
        [typeof(CheckpointSaved)] = "CS",
        [typeof(GetStatistics)] = "GS",
        [typeof(ServerStatistics)] = "SS",
    };

    /// <summary>Every message type this serializer handles (tests check each round-trips).</summary>
    public static IReadOnlyCollection<Type> MessageTypes => Manifests.Keys;

    public override string Manifest(object o) =>
        Manifests.TryGetValue(o.GetType(), out string? manifest)
            ? manifest
            : throw new SerializationException($"{o.GetType().FullName} is not a DistributedBackprop wire message");

    public override byte[] ToBinary(object obj)
    {
        var w = new Writer();
        switch (obj)
        {
            case RegisterWorker m: w.String(m.WorkerName); break;
            case WorkerAccepted m: w.String(m.WorkerName); w.Long(m.NextStep); break;
            case ComputeGradients m: w.Long(m.Step); w.Int(m.Epoch); w.Int(m.StepInEpoch); w.Int(m.ChunkLo); w.Int(m.ChunkHi); w.Floats(m.Parameters); break;
            case GradientsComputed m: w.Long(m.Step); w.Int(m.Node.Lo); w.Int(m.Node.Size); w.Result(m.Result); w.Double(m.ComputeSeconds); w.Floats(m.Gradient); break;
            case TrainEpoch m: w.Int(m.Epoch); w.Bool(m.ReturnParameters); break;
            case StepApplied m: w.Long(m.GlobalStep); w.Int(m.Epoch); w.Int(m.StepInEpoch); w.Result(m.Result); w.Int(m.Workers); break;
            case EpochTrained m:
                w.Int(m.Epoch); w.Long(m.GlobalStep); w.Double(m.LossSum); w.Long(m.Correct); w.Long(m.Rows); w.Float(m.LearningRate);
                w.Double(m.Seconds); w.Double(m.WaitingForSlowestSeconds); w.Double(m.ServerSeconds); w.Long(m.DroppedGradients); w.Int(m.Workers);
                w.Map(m.WorkerStepsPerSecond);
                w.Map(m.WorkerBusyFraction);
                w.Floats(m.Parameters);
                break;
            case TrainingFailed m: w.String(m.Reason); break;
            case SaveCheckpoint m: w.String(m.Path); break;
            case CheckpointSaved m: w.String(m.Path); w.Long(m.GlobalStep); break;
            case GetStatistics: break;
            case ServerStatistics m:
                w.Long(m.GlobalStep); w.Int(m.Workers); w.Long(m.StaleDropped); w.Long(m.DuplicatesDropped); w.Long(m.UnregisteredIgnored); w.Long(m.Reassignments); w.Bool(m.Failed);
                break;
            default:
                throw new SerializationException($"{obj.GetType().FullName} is not a DistributedBackprop wire message");
        }
        return w.ToArray();
    }

    public override object FromBinary(byte[] bytes, string manifest)
    {
        var r = new Reader(bytes, manifest);
        object message = manifest switch
        {
            "RW" => new RegisterWorker(r.String()),
            "WA" => new WorkerAccepted(r.String(), r.Long()),
            "CG" => new ComputeGradients(r.Long(), r.Int(), r.Int(), r.Int(), r.Int(), r.Floats()),
            "GC" => ReadGradients(r),
            "TE" => new TrainEpoch(r.Int(), r.Bool()),
            "SA" => new StepApplied(r.Long(), r.Int(), r.Int(), r.Result(), r.Int()),
            "ET" => ReadEpochTrained(r),
            "TF" => new TrainingFailed(r.String()),
            "SC" => new SaveCheckpoint(r.String()),
            "CS" => new CheckpointSaved(r.String(), r.Long()),
            "GS" => GetStatistics.Instance,
            "SS" => new ServerStatistics(r.Long(), r.Int(), r.Long(), r.Long(), r.Long(), r.Long(), r.Bool()),
            _ => throw new SerializationException($"unknown wire message manifest '{manifest}' ({bytes.Length} bytes)"),
        };
        r.End();
        return message;
    }

    private static GradientsComputed ReadGradients(Reader r)
    {
        // Field order as written: step, node, result, compute time, gradient.
        long step = r.Long();
        var node = new TreeNode(r.Int(), r.Int());
        BatchResult result = r.Result();
        double seconds = r.Double();
        return new GradientsComputed(step, node, result, r.Floats(), seconds);
    }

    private static EpochTrained ReadEpochTrained(Reader r)
    {
        int epoch = r.Int();
        long step = r.Long();
        double loss = r.Double();
        long correct = r.Long(), rows = r.Long();
        float lr = r.Float();
        double seconds = r.Double(), waiting = r.Double(), server = r.Double();
        long dropped = r.Long();
        int workers = r.Int();
        Dictionary<string, double> rates = r.Map(), busy = r.Map();
        return new EpochTrained(epoch, step, loss, correct, rows, lr, seconds, waiting, server, dropped, workers, rates, busy, r.Floats());
    }

    private sealed class Writer
    {
        private byte[] _buffer = new byte[64];
        private int _length;

        private Span<byte> Take(int count)
        {
            if (_length + count > _buffer.Length)
            {
                Array.Resize(ref _buffer, Math.Max(_buffer.Length * 2, _length + count));
            }
            Span<byte> span = _buffer.AsSpan(_length, count);
            _length += count;
            return span;
        }

        public void Int(int v) => BinaryPrimitives.WriteInt32LittleEndian(Take(4), v);
        public void Long(long v) => BinaryPrimitives.WriteInt64LittleEndian(Take(8), v);
        public void Float(float v) => BinaryPrimitives.WriteSingleLittleEndian(Take(4), v);
        public void Double(double v) => BinaryPrimitives.WriteDoubleLittleEndian(Take(8), v);
        public void Bool(bool v) => Take(1)[0] = v ? (byte)1 : (byte)0;

        public void String(string v)
        {
            int count = Encoding.UTF8.GetByteCount(v);
            Int(count);
            Encoding.UTF8.GetBytes(v, Take(count));
        }

        public void Map(IReadOnlyDictionary<string, double> map)
        {
            Int(map.Count);
            foreach (var (key, value) in map.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            {
                String(key);
                Double(value);
            }
        }

        public void Result(BatchResult v)
        {
            Double(v.LossSum);
            Int(v.Correct);
            Int(v.Rows);
        }

        public void Floats(float[] values)
        {
            Int(values.Length);
            Span<byte> target = Take(values.Length * sizeof(float));
            if (BitConverter.IsLittleEndian)
            {
                MemoryMarshal.AsBytes(values.AsSpan()).CopyTo(target);
            }
            else
            {
                for (int i = 0; i < values.Length; i++)
                {
                    BinaryPrimitives.WriteSingleLittleEndian(target[(i * 4)..], values[i]);
                }
            }
        }

        public byte[] ToArray() => _buffer.AsSpan(0, _length).ToArray();
    }

    private sealed class Reader(byte[] bytes, string manifest)
    {
        private int _position;

        private ReadOnlySpan<byte> Take(int count, string what)
        {
            if (count < 0 || _position + count > bytes.Length)
            {
                throw new SerializationException($"truncated {manifest} message: {what} needs {count} bytes at offset {_position}, the payload has {bytes.Length}");
            }
            ReadOnlySpan<byte> span = bytes.AsSpan(_position, count);
            _position += count;
            return span;
        }

        public int Int() => BinaryPrimitives.ReadInt32LittleEndian(Take(4, "an int"));
        public long Long() => BinaryPrimitives.ReadInt64LittleEndian(Take(8, "a long"));
        public float Float() => BinaryPrimitives.ReadSingleLittleEndian(Take(4, "a float"));
        public double Double() => BinaryPrimitives.ReadDoubleLittleEndian(Take(8, "a double"));

        public bool Bool() => Take(1, "a bool")[0] switch
        {
            0 => false,
            1 => true,
            var b => throw new SerializationException($"malformed {manifest} message: byte {b} at offset {_position - 1} is not a bool"),
        };

        public int Count(int minimumBytesEach)
        {
            int count = Int();
            if (count < 0 || (long)count * minimumBytesEach > bytes.Length - _position)
            {
                throw new SerializationException($"malformed {manifest} message: count {count} at offset {_position - 4} exceeds the payload");
            }
            return count;
        }

        public string String()
        {
            int count = Count(1);
            try
            {
                return new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(Take(count, "a string"));
            }
            catch (DecoderFallbackException e)
            {
                throw new SerializationException($"malformed {manifest} message: invalid UTF-8 at offset {_position - count}", e);
            }
        }

        public BatchResult Result() => new(Double(), Int(), Int());

        public Dictionary<string, double> Map()
        {
            int count = Count(minimumBytesEach: 12);
            var map = new Dictionary<string, double>(count);
            for (int i = 0; i < count; i++)
            {
                map[String()] = Double();
            }
            return map;
        }

        public float[] Floats()
        {
            int count = Count(sizeof(float));
            ReadOnlySpan<byte> raw = Take(count * sizeof(float), "a float array");
            var values = GC.AllocateUninitializedArray<float>(count);
            if (BitConverter.IsLittleEndian)
            {
                raw.CopyTo(MemoryMarshal.AsBytes(values.AsSpan()));
            }
            else
            {
                for (int i = 0; i < count; i++)
                {
                    values[i] = BinaryPrimitives.ReadSingleLittleEndian(raw[(i * 4)..]);
                }
            }
            return values;
        }

        public void End()
        {
            if (_position != bytes.Length)
            {
                throw new SerializationException($"malformed {manifest} message: {bytes.Length - _position} unexpected bytes after offset {_position}");
            }
        }
    }
}
