using DistributedBackprop.Randomness;

namespace DistributedBackprop.Tests;

public class RandomTests
{
    [Fact]
    public void SplitMix64_MatchesTheReferenceSequence()
    {
        ulong state = 0;
        // First output of Vigna's splitmix64.c for seed 0.
        Assert.Equal(0xE220A8397B1DCDAFUL, Xoshiro256.SplitMix64(ref state));
    }

    [Fact]
    public void Xoshiro256StarStar_MatchesAnIndependentImplementation()
    {
        // Values from a separate Python transcription of xoshiro256starstar.c, seeded by SplitMix64.
        var random = new Xoshiro256(42);
        Assert.Equal(0x15780B2E0C2EC716UL, random.NextUInt64());
        Assert.Equal(0x6104D9866D113A7EUL, random.NextUInt64());
        Assert.Equal(0xAE17533239E499A1UL, random.NextUInt64());
        Assert.Equal(0xECB8AD4703B360A1UL, random.NextUInt64());
        var zero = new Xoshiro256(0);
        Assert.Equal(0x99EC5F36CB75F2B4UL, zero.NextUInt64());
        Assert.Equal(0xBF6E1F784956452AUL, zero.NextUInt64());
    }

    [Fact]
    public void NextInt_StaysInRange_AndHitsEveryValueRoughlyEqually()
    {
        var random = new Xoshiro256(5);
        var counts = new int[7];
        for (int i = 0; i < 70_000; i++)
        {
            counts[random.NextInt(7)]++;
        }
        Assert.All(counts, c => Assert.InRange(c, 9_400, 10_600));
        Assert.Throws<ArgumentOutOfRangeException>(() => new Xoshiro256(1).NextInt(0));
    }

    [Fact]
    public void Shuffle_IsAPermutation_AndDependsOnTheSeed()
    {
        int[] a = Enumerable.Range(0, 100).ToArray(), b = (int[])a.Clone(), c = (int[])a.Clone();
        new Xoshiro256(1).Shuffle(a);
        new Xoshiro256(1).Shuffle(b);
        new Xoshiro256(2).Shuffle(c);
        Assert.Equal(a, b);
        Assert.NotEqual(a, c);
        Assert.Equal(Enumerable.Range(0, 100), a.Order());
    }

    [Fact]
    public void Streams_ForDifferentPurposesOrIndices_AreIndependent()
    {
        ulong Next(StreamPurpose p, ulong i) => Xoshiro256.ForStream(9, p, i).NextUInt64();
        Assert.NotEqual(Next(StreamPurpose.EpochOrder, 0), Next(StreamPurpose.EpochOrder, 1));
        Assert.NotEqual(Next(StreamPurpose.EpochOrder, 0), Next(StreamPurpose.Initialisation, 0));
        Assert.Equal(Next(StreamPurpose.TrainTestSplit, 3), Next(StreamPurpose.TrainTestSplit, 3));
    }

    [Fact]
    public void NextSingle_IsInUnitInterval()
    {
        var random = new Xoshiro256(3);
        for (int i = 0; i < 10_000; i++)
        {
            float x = random.NextSingle();
            Assert.InRange(x, 0f, 0.99999994f);
        }
    }
}
