using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Runtime.Serialization;
using System.Text;
using DistributedBackprop.Actors.Cluster;
using DistributedBackprop.Data;
using DistributedBackprop.Engine;
using DistributedBackprop.Network;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Actors.Serialization;

/// <summary>
/// The byte format of every <see cref="IWireMessage"/>, written to and read from a stream: little-endian
/// fixed-width fields, float arrays as a count and raw little-endian float32 (4 bytes per value, no
/// per-element framing), strings as a length and UTF-8. Used by <see cref="WireSerializer"/> (Akka
/// remoting) and by the bulk tensor channel, which streams float arrays straight from and into the socket.
/// The manifest is a two-letter code from a closed list, so a peer can never make this process
/// instantiate a type of its choosing. Malformed or truncated input raises <see cref="SerializationException"/>
/// naming the message and what was wrong.
/// </summary>
public static class WireFormat
{
    /// <summary>Bumped whenever the format or the protocol changes; nodes of different versions refuse each other.</summary>
    public const int ProtocolVersion = 10;

    private static readonly Dictionary<Type, string> Manifests = new()
    {
        [typeof(RegisterWorker)] = "RW",
        [typeof(WorkerAccepted)] = "WA",
        [typeof(WorkerRefused)] = "WR",
        [typeof(WorkerJoined)] = "WJ",
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
        [typeof(JoinRequest)] = "JQ",
        [typeof(JoinAccepted)] = "JA",
        [typeof(JoinRefused)] = "JR",
        [typeof(RequestTrainingData)] = "RD",
        [typeof(TrainingDataChunk)] = "DC",
        [typeof(TrainingFinished)] = "FN",
        [typeof(HostShard)] = "HS",
        [typeof(ShardReady)] = "SY",
        [typeof(ShardMap)] = "SM",
        [typeof(GradientSlice)] = "GL",
        [typeof(SliceReduced)] = "SR",
        [typeof(ApplySlice)] = "AP",
        [typeof(SliceApplied)] = "SP",
        [typeof(ParameterSlice)] = "PL",
        [typeof(PublishSlice)] = "PB",
        [typeof(CollectSlice)] = "CL",
        [typeof(SliceCollected)] = "SX",
        [typeof(ShardFailed)] = "SF",
        [typeof(AskMissing)] = "QM",
        [typeof(SliceMissing)] = "MS",
    };

    /// <summary>Every message type of the protocol.</summary>
    public static IReadOnlyCollection<Type> MessageTypes => Manifests.Keys;

    public static string Manifest(object message) =>
        Manifests.TryGetValue(message.GetType(), out string? manifest)
            ? manifest
            : throw new SerializationException($"{message.GetType().FullName} is not a DistributedBackprop wire message");

    public static void Write(Stream stream, object message)
    {
        var w = new Writer(stream);
        switch (message)
        {
            case RegisterWorker m: w.String(m.WorkerName); w.Int(m.ProtocolVersion); w.String(m.DataHash); w.String(m.Architecture); w.String(m.NumericFingerprint); break;
            case WorkerAccepted m: w.String(m.WorkerName); w.Long(m.NextStep); break;
            case WorkerRefused m: w.String(m.WorkerName); w.String(m.Reason); break;
            case WorkerJoined m: w.String(m.WorkerName); w.Int(m.Workers); break;
            case ComputeGradients m: w.Long(m.Step); w.Int(m.Epoch); w.Int(m.StepInEpoch); w.Int(m.ChunkLo); w.Int(m.ChunkHi); w.Floats(m.Parameters); w.Bool(m.Start == RoundStart.MinusOwnChange); break;
            case GradientsComputed m: w.Long(m.Step); w.Int(m.Node.Lo); w.Int(m.Node.Size); w.Result(m.Result); w.Double(m.ComputeSeconds); w.Results(m.PartResults); w.Floats(m.Gradient); break;
            case TrainEpoch m: w.Int(m.Epoch); w.Bool(m.ReturnParameters); break;
            case StepApplied m:
                w.Long(m.GlobalStep); w.Int(m.Epoch); w.Int(m.StepInEpoch); w.Result(m.Result); w.Int(m.Workers);
                w.Bool(m.Round is not null);
                if (m.Round is { } round) { w.Doubles(round.ReplicaLosses); w.Double(round.OuterStepNorm); }
                break;
            case EpochTrained m:
                w.Int(m.Epoch); w.Long(m.GlobalStep); w.Double(m.LossSum); w.Long(m.Correct); w.Long(m.Rows); w.Float(m.LearningRate);
                w.Double(m.Seconds); w.Double(m.WaitingForSlowestSeconds); w.Double(m.ServerSeconds); w.Long(m.DroppedGradients); w.Int(m.Workers); w.Long(m.StepsWithThetaCopies);
                w.Map(m.WorkerStepsPerSecond); w.Map(m.WorkerBusyFraction); w.Map(m.WorkerStepSecondsMedian); w.Map(m.WorkerStepSecondsP90); w.Floats(m.Parameters);
                break;
            case TrainingFailed m: w.String(m.Reason); w.Bool(m.Restartable); break;
            case SaveCheckpoint m: w.String(m.Path); break;
            case CheckpointSaved m: w.String(m.Path); w.Long(m.GlobalStep); break;
            case GetStatistics: break;
            case ServerStatistics m:
                w.Long(m.GlobalStep); w.Int(m.Workers); w.Long(m.StaleDropped); w.Long(m.DuplicatesDropped); w.Long(m.UnregisteredIgnored); w.Long(m.Reassignments); w.Long(m.Unauthorized); w.Long(m.Speculations); w.Bool(m.Failed);
                break;
            case JoinRequest m: w.String(m.NodeName); w.Int(m.ProtocolVersion); w.Long(m.MaximumFrameSize); w.String(m.BulkEndpoint); w.Bool(m.WantsStreamedData); break;
            case JoinAccepted m:
                w.String(m.ConfigJson); w.NullableString(m.DataPath); w.NullableString(m.LabelColumn); w.Int((int)m.CsvHeader); w.Double(m.TestFraction);
                w.String(m.DataHash); w.String(m.Architecture); w.Floats(m.PreprocessShift); w.Floats(m.PreprocessScale);
                break;
            case JoinRefused m: w.String(m.Reason); break;
            case RequestTrainingData: break;
            case TrainingDataChunk m: w.Int(m.FirstRow); w.Int(m.TotalRows); w.Int(m.Features); w.Ints(m.Labels); w.Floats(m.Values); break;
            case TrainingFinished m: w.Long(m.Steps); w.Bool(m.Succeeded); w.String(m.Message); break;
            case HostShard m: w.Int(m.Shard); w.Int(m.Shards); w.Long(m.Step); w.Long(m.OptimizerSteps); w.Floats(m.Parameters); w.FloatArrays(m.State); break;
            case ShardReady m: w.Int(m.Shard); w.Long(m.Step); break;
            case ShardMap m: w.Peers(m.Shards); break;
            case GradientSlice m: w.Long(m.Step); w.Int(m.Node.Lo); w.Int(m.Node.Size); w.Int(m.Offset); w.Floats(m.Values); break;
            case SliceReduced m: w.Long(m.Step); w.Int(m.Shard); w.Bool(m.Finite); break;
            case ApplySlice m: w.Long(m.Step); w.Long(m.NextStep); w.Float(m.LearningRate); w.Peers(m.Workers); break;
            case SliceApplied m: w.Long(m.Step); w.Int(m.Shard); w.Bool(m.Finite); break;
            case ParameterSlice m: w.Long(m.Step); w.Int(m.Shard); w.Int(m.Offset); w.Floats(m.Values); break;
            case PublishSlice m: w.Peers(m.Workers); break;
            case CollectSlice m: w.Long(m.Request); break;
            case SliceCollected m: w.Long(m.Request); w.Int(m.Shard); w.Long(m.Step); w.Long(m.OptimizerSteps); w.Floats(m.Parameters); w.FloatArrays(m.State); break;
            case ShardFailed m: w.Int(m.Shard); w.String(m.Reason); break;
            case AskMissing m: w.Long(m.Step); break;
            case SliceMissing m: w.Long(m.Step); w.Int(m.Shard); w.Ints(m.Lo); w.Ints(m.Hi); break;
            default:
                throw new SerializationException($"{message.GetType().FullName} is not a DistributedBackprop wire message");
        }
    }

    /// <summary>Reads one message of <paramref name="length"/> bytes; float arrays come from <paramref name="allocate"/>.</summary>
    public static object Read(Stream stream, string manifest, long length, Func<int, float[]>? allocate = null)
    {
        var r = new Reader(stream, manifest, length, allocate ?? (n => GC.AllocateUninitializedArray<float>(n)));
        object message = manifest switch
        {
            "RW" => new RegisterWorker(r.String(), r.Int(), r.String(), r.String(), r.String()),
            "WA" => new WorkerAccepted(r.String(), r.Long()),
            "WR" => new WorkerRefused(r.String(), r.String()),
            "WJ" => new WorkerJoined(r.String(), r.Int()),
            "CG" => new ComputeGradients(r.Long(), r.Int(), r.Int(), r.Int(), r.Int(), r.Floats()) { Start = r.Bool() ? RoundStart.MinusOwnChange : RoundStart.FromParameters },
            "GC" => ReadGradients(r),
            "TE" => new TrainEpoch(r.Int(), r.Bool()),
            "SA" => new StepApplied(r.Long(), r.Int(), r.Int(), r.Result(), r.Int()) { Round = r.Bool() ? new RoundReport(r.Doubles(), r.Double()) : null },
            "ET" => ReadEpochTrained(r),
            "TF" => new TrainingFailed(r.String(), r.Bool()),
            "SC" => new SaveCheckpoint(r.String()),
            "CS" => new CheckpointSaved(r.String(), r.Long()),
            "GS" => GetStatistics.Instance,
            "SS" => new ServerStatistics(r.Long(), r.Int(), r.Long(), r.Long(), r.Long(), r.Long(), r.Long(), r.Long(), r.Bool()),
            "JQ" => new JoinRequest(r.String(), r.Int(), r.Long(), r.String(), r.Bool()),
            "JA" => new JoinAccepted(r.String(), r.NullableString(), r.NullableString(), CsvHeaderOf(r.Int()), r.Double(), r.String(), r.String(), r.Floats(), r.Floats()),
            "JR" => new JoinRefused(r.String()),
            "RD" => RequestTrainingData.Instance,
            "DC" => ReadDataChunk(r),
            "FN" => new TrainingFinished(r.Long(), r.Bool(), r.String()),
            "HS" => new HostShard(r.Int(), r.Int(), r.Long(), r.Long(), r.Floats(), r.FloatArrays()),
            "SY" => new ShardReady(r.Int(), r.Long()),
            "SM" => new ShardMap(r.Peers()),
            "GL" => new GradientSlice(r.Long(), new TreeNode(r.Int(), r.Int()), r.Int(), r.Floats()),
            "SR" => new SliceReduced(r.Long(), r.Int(), r.Bool()),
            "AP" => new ApplySlice(r.Long(), r.Long(), r.Float(), r.Peers()),
            "SP" => new SliceApplied(r.Long(), r.Int(), r.Bool()),
            "PL" => new ParameterSlice(r.Long(), r.Int(), r.Int(), r.Floats()),
            "PB" => new PublishSlice(r.Peers()),
            "CL" => new CollectSlice(r.Long()),
            "SX" => new SliceCollected(r.Long(), r.Int(), r.Long(), r.Long(), r.Floats(), r.FloatArrays()),
            "SF" => new ShardFailed(r.Int(), r.String()),
            "QM" => new AskMissing(r.Long()),
            "MS" => new SliceMissing(r.Long(), r.Int(), r.Ints(), r.Ints()),
            _ => throw new SerializationException($"unknown wire message manifest '{manifest}' ({length} bytes)"),
        };
        r.End();
        return message;
    }

    private static CsvHeader CsvHeaderOf(int value) =>
        Enum.IsDefined((CsvHeader)value) ? (CsvHeader)value : throw new SerializationException($"CSV header mode {value} is not one this node knows");

    private static GradientsComputed ReadGradients(Reader r)
    {
        long step = r.Long();
        var node = new TreeNode(r.Int(), r.Int());
        BatchResult result = r.Result();
        double seconds = r.Double();
        BatchResult[] parts = r.Results();
        return new GradientsComputed(step, node, result, r.Floats(), seconds) { PartResults = parts };
    }

    private static TrainingDataChunk ReadDataChunk(Reader r)
    {
        int first = r.Int(), total = r.Int(), features = r.Int();
        int[] labels = r.Ints();
        return new TrainingDataChunk(first, total, features, r.Floats(), labels);
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
        long stepsWithCopies = r.Long();
        Dictionary<string, double> rates = r.Map(), busy = r.Map(), median = r.Map(), p90 = r.Map();
        return new EpochTrained(epoch, step, loss, correct, rows, lr, seconds, waiting, server, dropped, workers, stepsWithCopies, rates, busy, median, p90, r.Floats());
    }

    private sealed class Writer(Stream stream)
    {
        private readonly byte[] _scratch = new byte[8];

        public void Int(int v) { BinaryPrimitives.WriteInt32LittleEndian(_scratch, v); stream.Write(_scratch, 0, 4); }
        public void Long(long v) { BinaryPrimitives.WriteInt64LittleEndian(_scratch, v); stream.Write(_scratch, 0, 8); }
        public void Float(float v) { BinaryPrimitives.WriteSingleLittleEndian(_scratch, v); stream.Write(_scratch, 0, 4); }
        public void Double(double v) { BinaryPrimitives.WriteDoubleLittleEndian(_scratch, v); stream.Write(_scratch, 0, 8); }
        public void Bool(bool v) => stream.WriteByte(v ? (byte)1 : (byte)0);

        public void String(string v)
        {
            byte[] bytes = Encoding.UTF8.GetBytes(v);
            Int(bytes.Length);
            stream.Write(bytes);
        }

        public void NullableString(string? v)
        {
            Bool(v is not null);
            if (v is not null)
            {
                String(v);
            }
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

        public void Results(BatchResult[] values)
        {
            Int(values.Length);
            foreach (BatchResult value in values)
            {
                Result(value);
            }
        }

        public void Doubles(IReadOnlyList<double> values)
        {
            Int(values.Count);
            foreach (double value in values)
            {
                Double(value);
            }
        }

        public void Floats(float[] values)
        {
            Int(values.Length);
            if (BitConverter.IsLittleEndian)
            {
                stream.Write(MemoryMarshal.AsBytes(values.AsSpan()));
                return;
            }
            foreach (float value in values)
            {
                Float(value);
            }
        }

        public void FloatArrays(float[][] arrays)
        {
            Int(arrays.Length);
            foreach (float[] values in arrays)
            {
                Floats(values);
            }
        }

        public void Peers(IReadOnlyList<PeerActor> peers)
        {
            Int(peers.Count);
            foreach (PeerActor peer in peers)
            {
                String(peer.Path);
                String(peer.Endpoint);
            }
        }

        public void Ints(int[] values)
        {
            Int(values.Length);
            if (BitConverter.IsLittleEndian)
            {
                stream.Write(MemoryMarshal.AsBytes(values.AsSpan()));
                return;
            }
            foreach (int value in values)
            {
                Int(value);
            }
        }
    }

    private sealed class Reader(Stream stream, string manifest, long length, Func<int, float[]> allocate)
    {
        private readonly byte[] _scratch = new byte[8];
        private long _position;

        private void Fill(Span<byte> target, string what)
        {
            if (_position + target.Length > length)
            {
                throw new SerializationException($"truncated {manifest} message: {what} needs {target.Length} bytes at offset {_position}, the payload has {length}");
            }
            try
            {
                stream.ReadExactly(target);
            }
            catch (EndOfStreamException e)
            {
                throw new SerializationException($"truncated {manifest} message: the stream ended inside {what} at offset {_position}", e);
            }
            _position += target.Length;
        }

        private ReadOnlySpan<byte> Take(int count, string what)
        {
            Span<byte> target = _scratch.AsSpan(0, count);
            Fill(target, what);
            return target;
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

        private int Count(int bytesEach, string what)
        {
            int count = Int();
            if (count < 0 || (long)count * bytesEach > length - _position)
            {
                throw new SerializationException($"malformed {manifest} message: {what} count {count} at offset {_position - 4} exceeds the payload");
            }
            return count;
        }

        public string String()
        {
            int count = Count(1, "string length");
            var bytes = new byte[count];
            Fill(bytes, "a string");
            try
            {
                return new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(bytes);
            }
            catch (DecoderFallbackException e)
            {
                throw new SerializationException($"malformed {manifest} message: invalid UTF-8 at offset {_position - count}", e);
            }
        }

        public string? NullableString() => Bool() ? String() : null;

        public BatchResult Result() => new(Double(), Int(), Int());

        public BatchResult[] Results()
        {
            var values = new BatchResult[Count(16, "result array")];
            for (int i = 0; i < values.Length; i++)
            {
                values[i] = Result();
            }
            return values;
        }

        public double[] Doubles()
        {
            var values = new double[Count(sizeof(double), "double array")];
            for (int i = 0; i < values.Length; i++)
            {
                values[i] = Double();
            }
            return values;
        }

        public Dictionary<string, double> Map()
        {
            int count = Count(12, "map");
            var map = new Dictionary<string, double>(count);
            for (int i = 0; i < count; i++)
            {
                map[String()] = Double();
            }
            return map;
        }

        public float[] Floats()
        {
            int count = Count(sizeof(float), "float array");
            float[] values = allocate(count);
            Fill(MemoryMarshal.AsBytes(values.AsSpan(0, count)), "a float array");
            if (!BitConverter.IsLittleEndian)
            {
                Span<int> bits = MemoryMarshal.Cast<float, int>(values.AsSpan(0, count));
                for (int i = 0; i < bits.Length; i++) bits[i] = BinaryPrimitives.ReverseEndianness(bits[i]);
            }
            return values;
        }

        /// <summary>A few float arrays (optimizer state: at most three); each checked against the payload before it is allocated.</summary>
        public float[][] FloatArrays()
        {
            var arrays = new float[Count(4, "float array list")][];
            for (int i = 0; i < arrays.Length; i++)
            {
                arrays[i] = Floats();
            }
            return arrays;
        }

        public PeerActor[] Peers()
        {
            var peers = new PeerActor[Count(8, "peer list")];
            for (int i = 0; i < peers.Length; i++)
            {
                peers[i] = new PeerActor(String(), String());
            }
            return peers;
        }

        public int[] Ints()
        {
            int count = Count(sizeof(int), "int array");
            var values = new int[count];
            Fill(MemoryMarshal.AsBytes(values.AsSpan()), "an int array");
            if (!BitConverter.IsLittleEndian)
            {
                for (int i = 0; i < values.Length; i++) values[i] = BinaryPrimitives.ReverseEndianness(values[i]);
            }
            return values;
        }

        public void End()
        {
            if (_position != length)
            {
                throw new SerializationException($"malformed {manifest} message: {length - _position} unexpected bytes after offset {_position}");
            }
        }
    }
}
