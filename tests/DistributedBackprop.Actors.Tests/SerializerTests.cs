using System.Runtime.Serialization;
using Akka.Serialization;
using Akka.TestKit.Xunit2;
using DistributedBackprop.Actors.Serialization;
using DistributedBackprop.Engine;
using DistributedBackprop.Network;
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Xunit.Abstractions;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Actors.Tests;

public sealed class SerializerTests(ITestOutputHelper output) : TestKit(LocalTraining.LoadConfig(), output: output)
{
    /// <summary>One instance of every wire message type, with awkward values.</summary>
    public static IEnumerable<object> Samples() =>
    [
        new RegisterWorker("worker-ü-1", 1, "abc123", "64-128-10 relu,softmax cross_entropy", "0f1e2d3c"),
        new WorkerRefused("worker-2", "different data"),
        new WorkerJoined("worker-3", 3),
        new Cluster.JoinRequest("node-a", 1, 128000, "10.0.0.2:4054", true),
        new Cluster.JoinAccepted("{\"epochs\":3}", null, "label", Data.CsvHeader.No, 0.2, "hash", "4-3-2 relu,softmax cross_entropy", [0.5f, 1f], [2f, 3f]),
        new Cluster.JoinRefused("protocol version 2"),
        Cluster.RequestTrainingData.Instance,
        new Cluster.TrainingDataChunk(4096, 60000, 2, [1f, 2f, 3f, 4f], [7, 8]),
        new Cluster.TrainingFinished(7035, true, "done"),
        new WorkerAccepted("w", long.MaxValue),
        new ComputeGradients(7, 2, 3, 1, 5, [1.5f, -0f, float.Epsilon, float.MaxValue]),
        new ComputeGradients(10, 2, 3, 1, 2, [0.5f]) { Start = RoundStart.MinusOwnChange },
        new GradientsComputed(9, new TreeNode(4, 4), new BatchResult(1.25, 3, 17), [0.1f, float.NegativeInfinity], 0.003),
        new GradientsComputed(9, new TreeNode(2, 2), new BatchResult(1.25, 3, 17), [0.5f], 0.003) { PartResults = [new BatchResult(0.5, 1, 8), new BatchResult(0.75, 2, 9)] },
        new TrainEpoch(4, false),
        new StepApplied(10, 1, 2, new BatchResult(-2, 0, 1), 3),
        new StepApplied(40, 1, 2, new BatchResult(-2, 0, 1), 3) { Round = new RoundReport([0.25, double.NaN], 1.5) },
        new EpochTrained(1, 20, 3.5, 18, 40, 0.01f, 1.5, 0.2, 0.05, 2, 3, 17, new Dictionary<string, double> { ["worker-1"] = 12.5, ["worker-2"] = 11 }, new Dictionary<string, double> { ["worker-1"] = 0.75 }, new Dictionary<string, double> { ["worker-1"] = 0.002 }, new Dictionary<string, double> { ["worker-1"] = 0.004, ["worker-2"] = 0.5 }, [1, 2, 3]),
        new TrainingFailed("worker-1 sent a gradient of 5 values"),
        new TrainingFailed("parameter shard 2 is gone", Restartable: true),
        new HostShard(2, 5, 700, 699, [1f, -2f, float.NaN], [[3f, 4f, 5f], [6f, 7f, float.PositiveInfinity]]),
        new ShardReady(4, 12),
        new ShardMap([new PeerActor("akka.tcp://dbp@10.0.0.2:4053/user/worker-agent/shard-0-1#123", "10.0.0.2:4054"), new PeerActor("akka://dbp/user/x", "")]),
        new GradientSlice(17, new TreeNode(2, 2), 65_536, [0.25f, -0f]),
        new SliceReduced(17, 3, false),
        new ApplySlice(17, 18, 0.01f, [new PeerActor("akka.tcp://dbp@10.0.0.3:4053/user/worker-agent/worker#9", "10.0.0.3:4054")]),
        new SliceApplied(17, 3, true),
        new ParameterSlice(18, 1, 7, [9f, 8f]),
        new PublishSlice([]),
        new CollectSlice(5),
        new SliceCollected(5, 1, 18, 18, [1f], [[2f], [3f]]),
        new ShardFailed(1, "a slice of 3 values"),
        new AskMissing(17),
        new SliceMissing(17, 1, [0, 5], [2, 8]),
        new SaveCheckpoint("/tmp/x.safetensors"),
        new CheckpointSaved("/tmp/x.safetensors", 42),
        GetStatistics.Instance,
        new ServerStatistics(1, 2, 3, 4, 5, 6, 7, 8, true),
    ];

    [Fact]
    public void EveryWireMessageType_IsBoundToTheBinarySerializer_AndHasASample()
    {
        var sampleTypes = Samples().Select(s => s.GetType()).ToHashSet();
        Assert.Equal(WireSerializer.MessageTypes.ToHashSet(), sampleTypes);
        var wireTypes = typeof(IWireMessage).Assembly.GetTypes().Where(t => typeof(IWireMessage).IsAssignableFrom(t) && !t.IsInterface).ToHashSet();
        Assert.Equal(wireTypes, sampleTypes);
        foreach (object sample in Samples())
        {
            Serializer serializer = Sys.Serialization.FindSerializerFor(sample);
            Assert.IsType<WireSerializer>(serializer);
        }
    }

    [Fact]
    public void EveryWireMessage_RoundTrips()
    {
        foreach (object sample in Samples())
        {
            object back = RoundTrip(sample);
            Assert.Equal(sample.GetType(), back.GetType());
            Assert.Equal(Describe(sample), Describe(back));
        }
    }

    [Property(MaxTest = 200)]
    public Property GradientMessages_RoundTripBitForBit(long step, int lo, int size, double loss, float[] values)
    {
        values ??= [];
        var message = new GradientsComputed(step, new TreeNode(lo, size), new BatchResult(loss, size, lo), values, loss);
        var back = (GradientsComputed)RoundTrip(message);
        bool same = back.Step == step && back.Node == message.Node && BitConverter.DoubleToInt64Bits(back.Result.LossSum) == BitConverter.DoubleToInt64Bits(loss)
            && back.Gradient.Select(BitConverter.SingleToInt32Bits).SequenceEqual(values.Select(BitConverter.SingleToInt32Bits));
        return same.Label($"{values.Length} values");
    }

    [Fact]
    public void AGradientsBound_IsNotSent_APeersGradientArrivesWithoutOne()
    {
        var message = new GradientsComputed(3, new TreeNode(0, 1), new BatchResult(1, 0, 1), [0.5f, -2f], 0) { Bound = 1e-30f };
        var back = (GradientsComputed)RoundTrip(message);
        Assert.Equal(float.PositiveInfinity, back.Bound);
        Assert.Equal(message.Gradient, back.Gradient);
    }

    [Fact]
    public void GradientPayload_IsRawFloat32_FourBytesPerValue()
    {
        var serializer = (SerializerWithStringManifest)Sys.Serialization.FindSerializerFor(new TrainEpoch(0));
        byte[] bytes = serializer.ToBinary(new GradientsComputed(1, new TreeNode(0, 1), default, new float[1000], 0));
        Assert.InRange(bytes.Length, 4000, 4000 + 64);
    }

    [Theory]
    [InlineData("GC", 0)]
    [InlineData("GC", 10)]
    [InlineData("CG", 30)]
    [InlineData("ET", 50)]
    [InlineData("RW", 2)]
    public void TruncatedPayload_IsRejectedWithAnError(string manifest, int keep)
    {
        var serializer = (SerializerWithStringManifest)Sys.Serialization.FindSerializerFor(new TrainEpoch(0));
        object sample = Samples().First(s => serializer.Manifest(s) == manifest);
        byte[] whole = serializer.ToBinary(sample);
        var error = Assert.Throws<SerializationException>(() => serializer.FromBinary(whole[..Math.Min(keep, whole.Length - 1)], manifest));
        Assert.Contains(manifest, error.Message);
    }

    [Fact]
    public void MalformedPayloads_AreRejectedWithAnError()
    {
        var serializer = (SerializerWithStringManifest)Sys.Serialization.FindSerializerFor(new TrainEpoch(0));
        Assert.Contains("unknown wire message manifest", Assert.Throws<SerializationException>(() => serializer.FromBinary([1, 2, 3], "System.Diagnostics.Process")).Message);
        byte[] ok = serializer.ToBinary(new TrainEpoch(3));
        Assert.Contains("unexpected bytes", Assert.Throws<SerializationException>(() => serializer.FromBinary([.. ok, 9], "TE")).Message);
        // A gradient whose length prefix claims more floats than the payload holds.
        byte[] lying = serializer.ToBinary(new GradientsComputed(1, new TreeNode(0, 1), default, [1f, 2f], 0));
        BitConverter.GetBytes(1_000_000).CopyTo(lying, lying.Length - 12);
        Assert.Throws<SerializationException>(() => serializer.FromBinary(lying, "GC"));
        // Replica figures whose count claims more than the payload holds, or a negative count: refused before allocating.
        byte[] figures = serializer.ToBinary(new GradientsComputed(1, new TreeNode(0, 2), default, [1f], 0) { PartResults = [default, default] });
        int countAt = 8 + 4 + 4 + 16 + 8;
        Assert.Equal(2, BitConverter.ToInt32(figures, countAt));
        foreach (int claimed in new[] { int.MaxValue, 1_000_000, -1 })
        {
            BitConverter.GetBytes(claimed).CopyTo(figures, countAt);
            Assert.Contains("exceeds the payload", Assert.Throws<SerializationException>(() => serializer.FromBinary(figures, "GC")).Message);
        }
        Assert.Throws<SerializationException>(() => serializer.ToBinary("not a wire message"));
    }

    private static readonly Dictionary<string, double> Empty = [];

    private static string Spell(IReadOnlyDictionary<string, double> map) => string.Join(',', map.OrderBy(k => k.Key).Select(k => $"{k.Key}={k.Value:R}"));

    private object RoundTrip(object message)
    {
        var serializer = (SerializerWithStringManifest)Sys.Serialization.FindSerializerFor(message);
        return serializer.FromBinary(serializer.ToBinary(message), serializer.Manifest(message));
    }

    /// <summary>Contents as text (records compare arrays by reference, so arrays are spelled out).</summary>
    private static string Floats(float[] values) => $"[{string.Join(',', values.Select(BitConverter.SingleToInt32Bits))}]";

    private static string Describe(object message) => message switch
    {
        ComputeGradients m => $"{m with { Parameters = [] }} [{string.Join(',', m.Parameters.Select(BitConverter.SingleToInt32Bits))}]",
        GradientsComputed m => $"{m with { Gradient = [], PartResults = [] }} [{string.Join(',', m.Gradient.Select(BitConverter.SingleToInt32Bits))}] [{string.Join(',', m.PartResults)}]",
        StepApplied { Round: { } round } m => $"{m with { Round = null }} [{string.Join(',', round.ReplicaLosses)}] {round.OuterStepNorm}",
        EpochTrained m => $"{m with { Parameters = [], WorkerStepsPerSecond = Empty, WorkerBusyFraction = Empty, WorkerStepSecondsMedian = Empty, WorkerStepSecondsP90 = Empty }} [{string.Join(',', m.Parameters)}] {Spell(m.WorkerStepsPerSecond)} {Spell(m.WorkerBusyFraction)} {Spell(m.WorkerStepSecondsMedian)} {Spell(m.WorkerStepSecondsP90)}",
        Cluster.JoinAccepted m => $"{m with { PreprocessShift = [], PreprocessScale = [] }} [{string.Join(',', m.PreprocessShift)}] [{string.Join(',', m.PreprocessScale)}]",
        HostShard m => $"{m with { Parameters = [], State = [] }} {Floats(m.Parameters)} {string.Join(' ', m.State.Select(Floats))}",
        SliceCollected m => $"{m with { Parameters = [], State = [] }} {Floats(m.Parameters)} {string.Join(' ', m.State.Select(Floats))}",
        ShardMap m => string.Join(' ', m.Shards),
        SliceMissing m => $"{m with { Lo = [], Hi = [] }} {string.Join(',', m.Lo)} {string.Join(',', m.Hi)}",
        ApplySlice m => $"{m with { Workers = [] }} {string.Join(' ', m.Workers)}",
        PublishSlice m => string.Join(' ', m.Workers),
        GradientSlice m => $"{m with { Values = [] }} {Floats(m.Values)}",
        ParameterSlice m => $"{m with { Values = [] }} {Floats(m.Values)}",
        Cluster.TrainingDataChunk m => $"{m with { Values = [], Labels = [] }} [{string.Join(',', m.Values)}] [{string.Join(',', m.Labels)}]",
        _ => message.ToString()!,
    };
}
