namespace DistributedBackprop.Randomness;

/// <summary>
/// xoshiro256** 1.0 (Blackman &amp; Vigna 2018, https://prng.di.unimi.it/), seeded through SplitMix64
/// (Steele, Lea &amp; Flood 2014) as its authors recommend. Written out here rather than using
/// <see cref="System.Random"/>, whose algorithm is an implementation detail that changed between .NET
/// versions: a seed must give the same numbers on every machine and runtime, forever.
/// Everything below is integer arithmetic plus exact power-of-two scaling, so results are bit-identical
/// everywhere. Streams are derived from (seed, purpose, index), so a checkpoint needs no generator state.
/// </summary>
public struct Xoshiro256
{
    private ulong _s0, _s1, _s2, _s3;

    public Xoshiro256(ulong seed)
    {
        ulong x = seed;
        _s0 = SplitMix64(ref x);
        _s1 = SplitMix64(ref x);
        _s2 = SplitMix64(ref x);
        _s3 = SplitMix64(ref x);
    }

    /// <summary>A generator for one purpose of one run: independent streams for (seed, purpose, index).</summary>
    public static Xoshiro256 ForStream(ulong seed, StreamPurpose purpose, ulong index = 0)
    {
        ulong x = seed;
        ulong mixed = SplitMix64(ref x) ^ ((ulong)purpose * 0x9E3779B97F4A7C15UL);
        x = mixed;
        mixed = SplitMix64(ref x) ^ (index * 0xD1B54A32D192ED03UL);
        return new Xoshiro256(mixed);
    }

    /// <summary>SplitMix64: advances <paramref name="state"/> by the golden-ratio increment and mixes it.</summary>
    public static ulong SplitMix64(ref ulong state)
    {
        ulong z = state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    public ulong NextUInt64()
    {
        ulong result = RotateLeft(_s1 * 5, 7) * 9;
        ulong t = _s1 << 17;
        _s2 ^= _s0;
        _s3 ^= _s1;
        _s1 ^= _s2;
        _s0 ^= _s3;
        _s2 ^= t;
        _s3 = RotateLeft(_s3, 45);
        return result;
    }

    /// <summary>Uniform in [0, 1) with 24 random bits: k·2⁻²⁴ is exact in float.</summary>
    public float NextSingle() => (NextUInt64() >> 40) * (1.0f / (1 << 24));

    /// <summary>Uniform in [0, 1) with 53 random bits, exact in double.</summary>
    public double NextDouble() => (NextUInt64() >> 11) * (1.0 / (1UL << 53));

    /// <summary>
    /// Uniform integer in [0, bound) without modulo bias: Lemire's multiply-shift with rejection
    /// (Lemire 2019, "Fast random integer generation in an interval").
    /// </summary>
    public int NextInt(int bound)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(bound, 1);
        ulong range = (ulong)bound;
        ulong threshold = (0UL - range) % range;
        while (true)
        {
            UInt128 product = (UInt128)NextUInt64() * range;
            if ((ulong)product >= threshold)
            {
                return (int)(ulong)(product >> 64);
            }
        }
    }

    /// <summary>Fisher–Yates (Durstenfeld) shuffle, in place.</summary>
    public void Shuffle(Span<int> items)
    {
        for (int i = items.Length - 1; i > 0; i--)
        {
            int j = NextInt(i + 1);
            (items[i], items[j]) = (items[j], items[i]);
        }
    }

    private static ulong RotateLeft(ulong x, int k) => (x << k) | (x >> (64 - k));
}

/// <summary>Independent random streams of one run, so that e.g. changing the split never changes initial weights.</summary>
public enum StreamPurpose : ulong
{
    Initialisation = 1,
    TrainTestSplit = 2,
    EpochOrder = 3,
    SyntheticData = 4,
    ValidationSplit = 5,
}
