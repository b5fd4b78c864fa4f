using DistributedBackprop.Data;
using DistributedBackprop.Engine;
using DistributedBackprop.Network;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Tests;

public class ByteCodedValuesTests
{
    private static int[] Bits(ReadOnlySpan<float> values) => [.. values.ToArray().Select(BitConverter.SingleToInt32Bits)];

    /// <summary>8-bit images as the IDX reader gives them, scaled to [0, 1] by the images' default preprocessing.</summary>
    private static Dataset ScaledImages(int rows, int features, int seed, int lastPixel = -1)
    {
        var random = new Random(seed);
        float[] pixels = [.. Enumerable.Range(0, rows * features).Select(_ => (float)random.Next(256))];
        // Every code appears, 0 and 255 included.
        for (int i = 0; i < Math.Min(256, pixels.Length); i++) pixels[i] = i;
        if (lastPixel >= 0) pixels[^1] = lastPixel;
        int[] labels = [.. Enumerable.Range(0, rows).Select(r => r % 3)];
        var raw = new Dataset("images", features, pixels, labels, ["a", "b", "c"], DataKind.Images);
        return Preprocessing.Fit(raw).Apply(raw);
    }

    [Theory]
    // Lengths around the vector loop (the scalar tail alone, whole vectors, vectors and a tail).
    [InlineData(1, 3)]
    [InlineData(3, 7)]
    [InlineData(40, 17)]
    [InlineData(64, 33)]
    public void ImagesScaledToTheUnitRange_AreCoded_AndEachCodeDecodesToItsValuesBits(int rows, int features)
    {
        Dataset images = ScaledImages(rows, features, seed: rows + features);
        ByteCodedValues? coded = images.ByteCoded;
        Assert.NotNull(coded);
        Assert.Equal(ByteCodedValues.ImageScale, coded.Scale);
        Assert.Equal(images.Values.Length, coded.Codes.Length);
        float[] decoded = [.. coded.Codes.Select(code => code * coded.Scale)];
        Assert.Equal(Bits(images.Values), Bits(decoded));
        Assert.Same(coded, images.ByteCoded);
    }

    public static TheoryData<float> NotCodes => new()
    {
        -0f,
        0.5f,
        // Past the codes, though code × scale gives their bits: only the range check refuses them.
        256 * ByteCodedValues.ImageScale,
        -1 * ByteCodedValues.ImageScale,
        float.NaN,
        float.PositiveInfinity,
        float.NegativeInfinity,
        float.MaxValue,
        3e9f,
        -3e9f,
        // One ulp either side of a code's value (7 · (1/255), which is not 7/255 rounded once: 7f / 255f is its neighbour).
        BitConverter.Int32BitsToSingle(BitConverter.SingleToInt32Bits(7 * ByteCodedValues.ImageScale) + 1),
        BitConverter.Int32BitsToSingle(BitConverter.SingleToInt32Bits(7 * ByteCodedValues.ImageScale) - 1),
    };

    [Theory]
    [MemberData(nameof(NotCodes))]
    public void OneValueThatNoCodeDecodesTo_RefusesTheWholeTable_WhereverItIs(float value)
    {
        float[] codes = [.. Enumerable.Range(0, 100).Select(i => (i % 256) * ByteCodedValues.ImageScale)];
        Assert.NotNull(ByteCodedValues.TryEncode(codes, ByteCodedValues.ImageScale));
        // At every place: the check before the allocation, each of the four vectors of every vector block, each
        // lane, and the scalar tail.
        for (int at = 0; at < codes.Length; at++)
        {
            float[] table = (float[])codes.Clone();
            table[at] = value;
            Assert.Null(ByteCodedValues.TryEncode(table, ByteCodedValues.ImageScale));
        }
    }

    [Fact]
    public void StandardisedTables_AreNotCoded()
    {
        Dataset table = TestNetworks.RandomDataset(50, 20, 3, 5);
        Assert.Null(Preprocessing.Fit(table).Apply(table).ByteCoded);
    }

    [Theory]
    [InlineData(0f)]
    [InlineData(-1f)]
    [InlineData(float.NaN)]
    [InlineData(float.PositiveInfinity)]
    public void AScaleThatIsNotFiniteAndPositive_IsRefused(float scale) =>
        Assert.Throws<ArgumentOutOfRangeException>(() => ByteCodedValues.TryEncode([0f], scale));

    [Fact]
    public void AGradientFromTheCodes_HasTheBitsOfOneFromTheFloats()
    {
        // The same rows twice: once a coded table; once with one more row whose value no code decodes to, so the
        // whole table stays floats. The batch never reads that row, so both computers see the same data.
        var arch = Architecture.Create(100, [40], 3, Activation.Relu, Activation.Softmax, Loss.CrossEntropy);
        Dataset coded = ScaledImages(64, 100, seed: 3);
        Dataset floats = ScaledImages(65, 100, seed: 3, lastPixel: 0);
        floats.Values[^1] = 0.5f;
        Assert.Equal(Bits(coded.Values), Bits(floats.Values.AsSpan(0, coded.Values.Length)));
        Assert.NotNull(coded.ByteCoded);
        Assert.Null(floats.ByteCoded);

        float[] theta = TestNetworks.ToFloat(TestNetworks.RandomParameters(arch, 4));
        int[] batch = [.. Enumerable.Range(0, 64).Select(i => (i * 37) % 64)];
        var fromCodes = new float[arch.ParameterCount];
        var fromFloats = new float[arch.ParameterCount];
        BatchResult codedResult = new NodeGradientComputer(arch, coded).Compute(theta, batch, 8, ChunkTree.Root(8), fromCodes);
        BatchResult floatResult = new NodeGradientComputer(arch, floats).Compute(theta, batch, 8, ChunkTree.Root(8), fromFloats);
        Assert.Equal(floatResult, codedResult);
        Assert.Equal(Bits(fromFloats), Bits(fromCodes));
    }

    [Fact]
    public void AnIdxDataSetPreparedForTraining_IsCoded_AndTheEmbeddedDigitsAreNot()
    {
        // The path a run takes: IDX files read, the training rows split off and scaled by the images' preprocessing.
        string dir = Directory.CreateTempSubdirectory("dbp-codes-").FullName;
        try
        {
            const int images = 30, side = 5;
            var random = new Random(2);
            var pixels = new byte[images * side * side];
            random.NextBytes(pixels);
            IdxFiles.WriteBytes(Path.Combine(dir, "train-images-idx3-ubyte"), [images, side, side], pixels);
            IdxFiles.WriteBytes(Path.Combine(dir, "train-labels-idx1-ubyte"), [images], [.. Enumerable.Range(0, images).Select(i => (byte)(i % 3))]);
            Dataset loaded = DataSources.Load(dir, null).Train;
            TrainingSession session = TrainingSession.Prepare(new TrainingConfig(), loaded, null, 0.2);
            // Not made by the preparation itself: a cluster server prepares a session and never gathers a batch.
            Assert.False(session.Train.ByteCodesMade);
            session.PrepareLocalGradients();
            Assert.True(session.Train.ByteCodesMade);
            ByteCodedValues? coded = session.Train.ByteCoded;
            Assert.NotNull(coded);
            Assert.Equal(Bits(session.Train.Values), Bits([.. coded.Codes.Select(code => code * coded.Scale)]));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
        Assert.Null(TrainingSession.Prepare(new TrainingConfig(), DataSources.EmbeddedDigits(), null, 0.2).Train.ByteCoded);
    }
}
