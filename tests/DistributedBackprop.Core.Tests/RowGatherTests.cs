using DistributedBackprop.Kernels;

namespace DistributedBackprop.Tests;

public class RowGatherTests
{
    [Theory]
    // Widths around the 16-float piece (none, a tail only, pieces and a tail) and Fashion-MNIST's; row counts
    // around the group of rows copied together, with rows repeated and out of order.
    [InlineData(1, 0)]
    [InlineData(1, 5)]
    [InlineData(15, 3)]
    [InlineData(16, 4)]
    [InlineData(17, 9)]
    [InlineData(33, 8)]
    [InlineData(784, 13)]
    [InlineData(800, 32)]
    public void Copy_IsTheRowByRowCopy(int width, int count)
    {
        const int tableRows = 50;
        var random = new Random(width * 100 + count);
        float[] table = new float[tableRows * width];
        for (int i = 0; i < table.Length; i++) table[i] = (float)random.NextDouble() - 0.5f;
        int[] rows = new int[count];
        for (int r = 0; r < count; r++) rows[r] = r % 4 == 3 ? rows[r - 1] : random.Next(tableRows);

        // One float past the rows, to show nothing beyond them is written.
        float[] gathered = new float[count * width + 1];
        gathered[^1] = 42f;
        RowGather.Copy(table, width, rows, gathered);

        float[] expected = new float[count * width + 1];
        expected[^1] = 42f;
        for (int r = 0; r < count; r++)
        {
            table.AsSpan(rows[r] * width, width).CopyTo(expected.AsSpan(r * width, width));
        }
        Assert.Equal(expected, gathered);
    }

    [Fact]
    public void ADestinationOfExactlyTheRows_IsFilled()
    {
        float[] table = [.. Enumerable.Range(1, 10 * 20).Select(i => (float)i)];
        float[] destination = new float[3 * 20];
        RowGather.Copy(table, 20, [9, 0, 4], destination);
        Assert.Equal(table.AsSpan(9 * 20, 20).ToArray(), destination.AsSpan(0, 20).ToArray());
        Assert.Equal(table.AsSpan(0, 20).ToArray(), destination.AsSpan(20, 20).ToArray());
        Assert.Equal(table.AsSpan(4 * 20, 20).ToArray(), destination.AsSpan(40, 20).ToArray());
    }

    [Fact]
    public void RowsOutsideTheTable_ADestinationTooSmall_OrNoWidth_AreRefusedBeforeAnythingIsCopied()
    {
        // Rows of non-zero values, so a copy of the good rows before the bad one would show.
        float[] table = [.. Enumerable.Range(1, 10 * 4).Select(i => (float)i)];
        float[] destination = new float[3 * 4];
        Assert.Throws<ArgumentOutOfRangeException>(() => RowGather.Copy(table, 4, [0, 1, 10], destination));
        Assert.Throws<ArgumentOutOfRangeException>(() => RowGather.Copy(table, 4, [2, -1], destination));
        Assert.Throws<ArgumentException>(() => RowGather.Copy(table, 4, [0, 1, 2, 3], destination));
        Assert.Throws<ArgumentOutOfRangeException>(() => RowGather.Copy(table, 0, [0], destination));
        Assert.All(destination, value => Assert.Equal(0f, value));
    }

    [Theory]
    // Widths around the 16-code piece and the 64-code line (none, a tail only, pieces, lines and a tail) and
    // Fashion-MNIST's 784; row counts around the group of rows converted together, rows repeated and out of order.
    [InlineData(1, 0)]
    [InlineData(1, 5)]
    [InlineData(15, 3)]
    [InlineData(16, 9)]
    [InlineData(17, 4)]
    [InlineData(63, 8)]
    [InlineData(64, 7)]
    [InlineData(65, 17)]
    [InlineData(129, 9)]
    [InlineData(784, 13)]
    public void CopyScaled_IsEachCodeTimesTheScale(int width, int count)
    {
        const int tableRows = 40;
        var random = new Random(width * 100 + count);
        byte[] table = new byte[tableRows * width];
        random.NextBytes(table);
        int[] rows = new int[count];
        for (int r = 0; r < count; r++) rows[r] = r % 5 == 4 ? rows[r - 1] : random.Next(tableRows);
        // A scale whose products round (1/255), so a conversion that skipped the exact widening would show.
        const float scale = 1f / 255f;

        float[] gathered = new float[count * width + 1];
        gathered[^1] = 42f;
        RowGather.CopyScaled(table, width, scale, rows, gathered);

        float[] expected = new float[count * width + 1];
        expected[^1] = 42f;
        for (int r = 0; r < count; r++)
        {
            for (int j = 0; j < width; j++) expected[r * width + j] = (float)table[rows[r] * width + j] * scale;
        }
        Assert.Equal(expected.Select(BitConverter.SingleToInt32Bits), gathered.Select(BitConverter.SingleToInt32Bits));
    }

    [Fact]
    public void CopyScaled_RefusesRowsOutsideTheTable_OrTooSmallADestination_BeforeAnythingIsCopied()
    {
        byte[] table = [.. Enumerable.Range(1, 10 * 4).Select(i => (byte)i)];
        float[] destination = new float[3 * 4];
        Assert.Throws<ArgumentOutOfRangeException>(() => RowGather.CopyScaled(table, 4, 1f, [0, 1, 10], destination));
        Assert.Throws<ArgumentOutOfRangeException>(() => RowGather.CopyScaled(table, 4, 1f, [2, -1], destination));
        Assert.Throws<ArgumentException>(() => RowGather.CopyScaled(table, 4, 1f, [0, 1, 2, 3], destination));
        Assert.Throws<ArgumentOutOfRangeException>(() => RowGather.CopyScaled(table, 0, 1f, [0], destination));
        Assert.All(destination, value => Assert.Equal(0f, value));
    }
}
