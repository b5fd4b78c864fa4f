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
    public void RowsOutsideTheTable_OrADestinationTooSmall_AreRefusedBeforeAnythingIsCopied()
    {
        float[] table = new float[10 * 4];
        float[] destination = new float[3 * 4];
        Assert.Throws<ArgumentOutOfRangeException>(() => RowGather.Copy(table, 4, [0, 10, 1], destination));
        Assert.Throws<ArgumentOutOfRangeException>(() => RowGather.Copy(table, 4, [-1], destination));
        Assert.Throws<ArgumentException>(() => RowGather.Copy(table, 4, [0, 1, 2, 3], destination));
        Assert.All(destination, value => Assert.Equal(0f, value));
    }
}
