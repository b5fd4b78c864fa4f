using DistributedBackprop.Actors.Cluster;
using Outcome = DistributedBackprop.Actors.Cluster.StreamedRows.Outcome;

namespace DistributedBackprop.Actors.Tests;

public class StreamedRowsTests
{
    private const int Features = 3, TotalRows = 10;
    private static readonly string[] Classes = ["0", "1"];

    /// <summary>Rows first..first+count−1 of a 10-row set: value (row, feature) = row · 10 + feature, label row % 2.</summary>
    private static TrainingDataChunk Chunk(int first, int count, float offset = 0) => new(first, TotalRows, Features,
        [.. Enumerable.Range(first * Features, count * Features).Select(i => i / Features * 10 + i % Features + offset)],
        [.. Enumerable.Range(first, count).Select(r => r % 2)]);

    [Fact]
    public void ChunksInAnyOrder_MakeTheDataSet_WhenTheLastRowIsIn()
    {
        var rows = new StreamedRows(Features, Classes);
        Assert.Equal(Outcome.Kept, rows.Add(Chunk(6, 4)));
        Assert.Equal(Outcome.Kept, rows.Add(Chunk(0, 3)));
        Assert.Null(rows.Rows);
        Assert.Equal(Outcome.Completed, rows.Add(Chunk(3, 3)));
        Assert.NotNull(rows.Rows);
        Assert.Equal(Chunk(0, 10).Values, rows.Rows.Values);
        Assert.Equal(Chunk(0, 10).Labels, rows.Rows.Labels);
        Assert.Equal(Classes, rows.Rows.Classes);
    }

    [Fact]
    public void AChunkThatArrivesAgain_IsDropped_AndDoesNotCompleteTheSetEarly()
    {
        var rows = new StreamedRows(Features, Classes);
        Assert.Equal(Outcome.Kept, rows.Add(Chunk(0, 5)));
        // Counted twice, it would make 10 rows while rows 5..9 never came.
        Assert.Equal(Outcome.Dropped, rows.Add(Chunk(0, 5, offset: 0.5f)));
        Assert.Null(rows.Rows);
        Assert.Equal(Outcome.Completed, rows.Add(Chunk(5, 5)));
        Assert.Equal(Chunk(0, 10).Values, rows.Rows!.Values);
    }

    [Fact]
    public void ChunksOnceEveryRowIsIn_AreDropped_AndWriteNothing()
    {
        var rows = new StreamedRows(Features, Classes);
        Assert.Equal(Outcome.Completed, rows.Add(Chunk(0, 10)));
        float[] trained = [.. rows.Rows!.Values];
        Assert.Equal(Outcome.Dropped, rows.Add(Chunk(2, 3, offset: 0.5f)));
        Assert.Equal(Outcome.Dropped, rows.Add(Chunk(0, 10, offset: 0.5f)));
        Assert.Equal(trained, rows.Rows.Values);
    }

    [Fact]
    public void AChunkOverlappingRowsAlreadyIn_IsMalformed_AndKeepsNothing()
    {
        var rows = new StreamedRows(Features, Classes);
        Assert.Equal(Outcome.Kept, rows.Add(Chunk(0, 5)));
        Assert.Equal(Outcome.Malformed, rows.Add(Chunk(4, 3, offset: 0.5f)));
        Assert.Equal(Outcome.Kept, rows.Add(Chunk(5, 2)));
        Assert.Equal(Outcome.Completed, rows.Add(Chunk(7, 3)));
        Assert.Equal(Chunk(0, 10).Values, rows.Rows!.Values);
    }

    public static TheoryData<string, TrainingDataChunk> Malformed => new()
    {
        { "features other than the run's", new TrainingDataChunk(0, TotalRows, Features + 1, new float[4], [0]) },
        { "no rows", new TrainingDataChunk(0, TotalRows, Features, [], []) },
        { "past the end", new TrainingDataChunk(9, TotalRows, Features, new float[6], [0, 1]) },
        { "a negative first row", new TrainingDataChunk(-1, TotalRows, Features, new float[3], [0]) },
        { "values that are not rows × features", new TrainingDataChunk(0, TotalRows, Features, new float[4], [0]) },
        { "a total past any array", new TrainingDataChunk(0, int.MaxValue, Features, new float[3], [0]) },
        { "a total of none", new TrainingDataChunk(0, 0, Features, new float[3], [0]) },
    };

    [Theory]
    [MemberData(nameof(Malformed))]
    public void AChunkWhoseSizesDoNotFit_IsMalformed(string what, TrainingDataChunk chunk)
    {
        var rows = new StreamedRows(Features, Classes);
        Assert.True(rows.Add(chunk) == Outcome.Malformed, what);
        Assert.Null(rows.Rows);
    }

    [Fact]
    public void AChunkOfAnotherTotal_ThanTheChunksBefore_IsMalformed()
    {
        var rows = new StreamedRows(Features, Classes);
        Assert.Equal(Outcome.Kept, rows.Add(Chunk(0, 5)));
        Assert.Equal(Outcome.Malformed, rows.Add(new TrainingDataChunk(5, TotalRows + 1, Features, new float[3], [0])));
    }
}
