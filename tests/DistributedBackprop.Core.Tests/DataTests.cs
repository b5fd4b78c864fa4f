using System.Buffers.Binary;
using System.IO.Compression;
using DistributedBackprop.Data;

namespace DistributedBackprop.Tests;

/// <summary>Readers: the happy paths, and every bad-input case naming file and place.</summary>
public sealed class DataTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("dbp-data-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Write(string name, string content)
    {
        string path = Path.Combine(_dir, name);
        File.WriteAllText(path, content);
        return path;
    }

    [Fact]
    public void Csv_ReadsFeaturesAndStringLabels_ClassesInOrderOfAppearance()
    {
        string path = Write("iris.csv", "a,b,species\n1,2,setosa\n3,4.5,virginica\n-1e2,0,setosa\n\n");
        Dataset data = CsvReader.Read(path, new CsvOptions());
        Assert.Equal(3, data.Rows);
        Assert.Equal(2, data.Features);
        Assert.Equal(["setosa", "virginica"], data.Classes);
        Assert.Equal([0, 1, 0], data.Labels);
        Assert.Equal([1f, 2f, 3f, 4.5f, -100f, 0f], data.Values);
    }

    [Theory]
    [InlineData("label")]
    [InlineData("0")]
    [InlineData("-3")]
    public void Csv_LabelColumn_ByNameOrIndex(string spec)
    {
        string path = Write("first.csv", "label,x,y\n\"cat, big\",1,2\ndog,3,4\n");
        Dataset data = CsvReader.Read(path, new CsvOptions { LabelColumn = spec });
        Assert.Equal(["cat, big", "dog"], data.Classes);
        Assert.Equal([1f, 2f, 3f, 4f], data.Values);
    }

    [Fact]
    public void Csv_HeaderlessNumbers_KeepEveryRow_WithAuto()
    {
        string path = Write("plain.csv", "1,2,0\n3,4,1\n5,6,0\n");
        Dataset data = CsvReader.Read(path, new CsvOptions());
        Assert.Equal(3, data.Rows);
        Assert.Equal([1f, 2f, 3f, 4f, 5f, 6f], data.Values);
        Assert.Equal(["0", "1"], data.Classes);
        // The same file said to have a header loses its first row to it, as asked.
        Assert.Equal(2, CsvReader.Read(path, new CsvOptions { Header = CsvHeader.Yes }).Rows);
    }

    [Fact]
    public void Csv_HeaderNo_ReadsTheFirstRowAsData_WithTextLabels_AndNamesColumnsByPosition()
    {
        string path = Write("iris-plain.csv", "5.1,3.5,setosa\n6.2,x,virginica\n");
        var error = Assert.Throws<DataException>(() => CsvReader.Read(path, new CsvOptions { Header = CsvHeader.No }));
        Assert.Equal($"{path}:2:2: 'x' in column 'column 2' is not a number", error.Message);
        string good = Write("iris-ok.csv", "5.1,3.5,setosa\n6.2,2.9,virginica\n");
        Dataset data = CsvReader.Read(good, new CsvOptions { Header = CsvHeader.No });
        Assert.Equal(2, data.Rows);
        Assert.Equal(["setosa", "virginica"], data.Classes);
    }

    [Fact]
    public void Csv_AutoRefusesToGuess_WhenTheFirstRowIsNumbersAndOneWord()
    {
        string path = Write("ambiguous.csv", "5.1,3.5,setosa\n6.2,2.9,virginica\n");
        var error = Assert.Throws<DataException>(() => CsvReader.Read(path, new CsvOptions()));
        Assert.Contains(":1: cannot tell whether the first row is a header or data", error.Message, StringComparison.Ordinal);
        Assert.Contains("--header yes or --header no", error.Message, StringComparison.Ordinal);
        // A header of words is a header.
        Assert.Equal(2, CsvReader.Read(Write("named.csv", "a,b,species\n5.1,3.5,setosa\n6.2,2.9,virginica\n"), new CsvOptions()).Rows);
    }

    [Fact]
    public void Csv_ALabelIndexEqualToAValue_DoesNotTurnTheFirstRowIntoAHeader()
    {
        // "0" is both a value of row 1 and the label's index: an index, and the row is data.
        string path = Write("indexed.csv", "3,1.5,0,2.2\n4,2.5,1,3.2\n");
        Dataset data = CsvReader.Read(path, new CsvOptions { LabelColumn = "0" });
        Assert.Equal(2, data.Rows);
        Assert.Equal(["3", "4"], data.Classes);
        Assert.Equal([1.5f, 0f, 2.2f, 2.5f, 1f, 3.2f], data.Values);
    }

    [Fact]
    public void Csv_TwoColumns_ANumberAndAWord_IsAmbiguousToo()
    {
        string path = Write("pair.csv", "0.5,cat\n0.7,dog\n");
        Assert.Contains("cannot tell whether the first row is a header or data", Assert.Throws<DataException>(() => CsvReader.Read(path, new CsvOptions())).Message, StringComparison.Ordinal);
        Assert.Equal(2, CsvReader.Read(path, new CsvOptions { Header = CsvHeader.No }).Rows);
    }

    [Fact]
    public void Csv_ALabelNamedOnAHeaderlessFile_IsAnError()
    {
        string path = Write("numbers.csv", "1,2,0\n3,4,1\n");
        var error = Assert.Throws<DataException>(() => CsvReader.Read(path, new CsvOptions { LabelColumn = "species" }));
        Assert.Contains("the first row is all numbers", error.Message, StringComparison.Ordinal);
        Assert.Contains("species", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Csv_Gzipped_IsReadTransparently()
    {
        string path = Path.Combine(_dir, "data.csv.gz");
        using (var gzip = new GZipStream(File.Create(path), CompressionLevel.Fastest))
        using (var writer = new StreamWriter(gzip))
        {
            writer.Write("x,y\n1,a\n2,b\n");
        }
        Assert.Equal(2, CsvReader.Read(path, new CsvOptions()).Rows);
    }

    [Theory]
    [InlineData("x,y,c\n1,2,a\n1,2\n", "bad.csv:3: 2 fields, the header has 3")]
    [InlineData("x,y,c\n1,2,a\n1,abc,b\n", "bad.csv:3:2: 'abc' in column 'y' is not a number")]
    [InlineData("x,y,c\n1,,a\n", "bad.csv:2:2: empty cell in feature column 'y'")]
    [InlineData("x,y,c\nNaN,1,a\n", "bad.csv:2:1: 'NaN' in column 'x' is not a finite number")]
    [InlineData("x,y,c\n1,-Infinity,a\n", "bad.csv:2:2: '-Infinity' in column 'y' is not a finite number")]
    [InlineData("x,y,c\n1,2,\n", "bad.csv:2:3: empty label in column 'c'")]
    [InlineData("x,y,c\n", "bad.csv: no data rows after the header")]
    [InlineData("", "bad.csv: empty file")]
    [InlineData("x,y,c\n1,2,\"a\n", "bad.csv:2: unterminated quoted field")]
    public void Csv_BadInput_NamesFileLineAndColumn(string content, string expected)
    {
        string path = Write("bad.csv", content);
        var error = Assert.Throws<DataException>(() => CsvReader.Read(path, new CsvOptions()));
        Assert.StartsWith(path.Replace("bad.csv", "", StringComparison.Ordinal), error.Message);
        Assert.Contains(expected, error.Message);
        Assert.DoesNotContain('\n', error.Message);
    }

    [Fact]
    public void Csv_UnknownLabelColumn_ListsTheColumns()
    {
        string path = Write("cols.csv", "x,y,c\n1,2,a\n");
        var error = Assert.Throws<DataException>(() => CsvReader.Read(path, new CsvOptions { LabelColumn = "species" }));
        Assert.Contains("cols.csv:1: no column named 'species' (columns: x, y, c)", error.Message);
        Assert.Contains("outside the 3 columns", Assert.Throws<DataException>(() => CsvReader.Read(path, new CsvOptions { LabelColumn = "7" })).Message);
    }

    [Fact]
    public void Csv_LabelMissingFromTheClassList_IsRejected()
    {
        string path = Write("test.csv", "x,c\n1,a\n2,z\n");
        var error = Assert.Throws<DataException>(() => CsvReader.Read(path, new CsvOptions { Classes = ["a", "b"] }));
        Assert.Contains("test.csv:3:2: label 'z' is not in the class list (a, b)", error.Message);
    }

    [Fact]
    public void Csv_WithoutLabelColumn_IsAcceptedForPrediction()
    {
        string path = Write("predict.csv", "x,y\n1,2\n");
        Dataset data = CsvReader.Read(path, new CsvOptions { LabelOptional = true, ExpectedFeatures = 2 });
        Assert.False(data.IsLabelled);
        Assert.Equal(2, data.Features);
    }

    private string WriteIdx(string name, byte type, int[] dims, byte[] data, bool gzip = false, int truncateBy = 0)
    {
        var bytes = new List<byte> { 0, 0, type, (byte)dims.Length };
        foreach (int d in dims)
        {
            var be = new byte[4];
            BinaryPrimitives.WriteInt32BigEndian(be, d);
            bytes.AddRange(be);
        }
        bytes.AddRange(data);
        byte[] content = bytes.Take(bytes.Count - truncateBy).ToArray();
        string path = Path.Combine(_dir, name);
        if (gzip)
        {
            using var stream = new GZipStream(File.Create(path), CompressionLevel.Fastest);
            stream.Write(content);
        }
        else
        {
            File.WriteAllBytes(path, content);
        }
        return path;
    }

    [Fact]
    public void Idx_DirectoryWithTheUsualFourFiles_GivesTrainAndTest()
    {
        WriteIdx("train-images-idx3-ubyte.gz", 8, [3, 2, 2], Enumerable.Range(0, 12).Select(i => (byte)(i * 20)).ToArray(), gzip: true);
        WriteIdx("train-labels-idx1-ubyte.gz", 8, [3], [0, 2, 1], gzip: true);
        WriteIdx("t10k-images-idx3-ubyte", 8, [1, 2, 2], [255, 0, 0, 255]);
        WriteIdx("t10k-labels-idx1-ubyte", 8, [1], [2]);
        LoadedData loaded = DataSources.Load(_dir, null);
        Assert.Equal(3, loaded.Train.Rows);
        Assert.Equal(4, loaded.Train.Features);
        Assert.Equal(["0", "1", "2"], loaded.Train.Classes);
        Assert.Equal(DataKind.Images, loaded.Train.Kind);
        Assert.Equal([2], loaded.BundledTest!.Labels);
        Assert.Equal(1f / 255f, Preprocessing.Fit(loaded.Train).Scale[0]);
    }

    [Fact]
    public void Idx_ImagesFile_FindsItsLabelsFile()
    {
        string images = WriteIdx("train-images-idx3-ubyte", 8, [2, 1, 3], [1, 2, 3, 4, 5, 6]);
        WriteIdx("train-labels-idx1-ubyte", 8, [2], [1, 0]);
        Dataset data = DataSources.Load(images, null).Train;
        Assert.Equal([1, 0], data.Labels);
    }

    [Fact]
    public void Idx_BadMagic_NamesTheByteOffset()
    {
        string images = WriteIdx("train-images-idx3-ubyte", 8, [1, 1, 1], [1]);
        File.WriteAllBytes(images, [1, 2, 3, 4, 5, 6, 7, 8]);
        WriteIdx("train-labels-idx1-ubyte", 8, [1], [0]);
        var error = Assert.Throws<DataException>(() => DataSources.Load(_dir, null));
        Assert.Contains("train-images-idx3-ubyte: byte 0: bad IDX magic 01 02 03 04", error.Message);
    }

    [Fact]
    public void Idx_TruncatedData_NamesWhereItEnds()
    {
        string images = WriteIdx("train-images-idx3-ubyte", 8, [2, 2, 2], new byte[8], truncateBy: 3);
        WriteIdx("train-labels-idx1-ubyte", 8, [2], [0, 1]);
        var error = Assert.Throws<DataException>(() => IdxReader.Read(images, Path.Combine(_dir, "train-labels-idx1-ubyte")));
        Assert.Contains("byte 21: truncated: the header promises 8 data bytes ending at byte 24", error.Message);
    }

    [Fact]
    public void Idx_TruncatedGzip_IsReported()
    {
        string images = WriteIdx("train-images-idx3-ubyte.gz", 8, [50, 10, 10], Enumerable.Range(0, 5000).Select(i => (byte)(i * 7)).ToArray(), gzip: true);
        byte[] whole = File.ReadAllBytes(images);
        File.WriteAllBytes(images, whole[..(whole.Length / 2)]);
        WriteIdx("train-labels-idx1-ubyte.gz", 8, [50], new byte[50], gzip: true);
        var error = Assert.Throws<DataException>(() => DataSources.Load(_dir, null));
        Assert.Contains("train-images-idx3-ubyte.gz: ", error.Message);
        Assert.Contains("truncated", error.Message);
    }

    [Fact]
    public void Idx_CountMismatch_NamesBothFiles()
    {
        string images = WriteIdx("train-images-idx3-ubyte", 8, [2, 1, 1], [1, 2]);
        string labels = WriteIdx("train-labels-idx1-ubyte", 8, [3], [0, 1, 0]);
        var error = Assert.Throws<DataException>(() => IdxReader.Read(images, labels));
        Assert.Contains("2 images but", error.Message);
        Assert.Contains("has 3 labels", error.Message);
    }

    [Fact]
    public void Idx_EmptyDataSet_IsRejected()
    {
        string images = WriteIdx("train-images-idx3-ubyte", 8, [0, 2, 2], []);
        string labels = WriteIdx("train-labels-idx1-ubyte", 8, [0], []);
        Assert.Contains("empty data set", Assert.Throws<DataException>(() => IdxReader.Read(images, labels)).Message);
    }

    [Fact]
    public void Idx_DimensionsWhoseProductWraps_AreRefusedOnTheHeader()
    {
        // 65536^4 = 2^64 wraps a long to 0, which once matched the empty data section.
        string images = WriteIdx("train-images-idx3-ubyte", 8, [65536, 65536, 65536, 65536], []);
        string labels = WriteIdx("train-labels-idx1-ubyte", 8, [1], [0]);
        var error = Assert.Throws<DataException>(() => IdxReader.Read(images, labels));
        Assert.Contains("train-images-idx3-ubyte: byte 4: the dimensions [65536, 65536, 65536, 65536] make more than", error.Message);
    }

    [Fact]
    public void Idx_GzipPromisingMoreThanAnArrayHolds_IsRefusedOnTheHeader()
    {
        string images = WriteIdx("train-images-idx3-ubyte.gz", 8, [3, 1_000_000_000], new byte[1000], gzip: true);
        string labels = WriteIdx("train-labels-idx1-ubyte", 8, [3], [0, 1, 2]);
        var error = Assert.Throws<DataException>(() => IdxReader.Read(images, labels));
        Assert.Contains("train-images-idx3-ubyte.gz: byte 4: the dimensions [3, 1000000000] make more than", error.Message);
    }

    /// <summary>The reader's error and the bytes it allocated on the way there: a lying header must cost no memory.</summary>
    private static (DataException Error, long Allocated) ReadIdxFailing(string images, string labels)
    {
        long before = GC.GetAllocatedBytesForCurrentThread();
        var error = Assert.Throws<DataException>(() => IdxReader.Read(images, labels));
        return (error, GC.GetAllocatedBytesForCurrentThread() - before);
    }

    [Fact]
    public void Idx_TruncatedGzipPromisingGigabytes_AllocatesOnlyWhatArrives()
    {
        string images = WriteIdx("train-images-idx3-ubyte.gz", 8, [2, 1_000_000_000], new byte[10], gzip: true);
        string labels = WriteIdx("train-labels-idx1-ubyte", 8, [2], [0, 1]);
        var (error, allocated) = ReadIdxFailing(images, labels);
        Assert.Contains("train-images-idx3-ubyte.gz: byte 22: truncated: the header promises 2000000000 data bytes ending at byte 2000000012", error.Message);
        Assert.True(allocated < 4 << 20, $"{allocated} bytes allocated for a file of 10 data bytes");
    }

    [Fact]
    public void Idx_GzipWithTrailingData_IsRefusedOneByteAfterTheData()
    {
        // 16 MB of zeros behind 4 data bytes: reported without decompressing them.
        string images = WriteIdx("train-images-idx3-ubyte.gz", 8, [1, 2, 2], new byte[4 + (16 << 20)], gzip: true);
        string labels = WriteIdx("train-labels-idx1-ubyte", 8, [1], [0]);
        var (error, allocated) = ReadIdxFailing(images, labels);
        Assert.Contains("train-images-idx3-ubyte.gz: byte 20: unexpected bytes after the data", error.Message);
        Assert.True(allocated < 4 << 20, $"{allocated} bytes allocated for a file of 4 data bytes");
    }

    [Fact]
    public void Idx_TrailingData_IsCounted()
    {
        string images = WriteIdx("train-images-idx3-ubyte", 8, [1, 2, 2], new byte[7]);
        string labels = WriteIdx("train-labels-idx1-ubyte", 8, [1], [0]);
        Assert.Contains("train-images-idx3-ubyte: byte 20: 3 unexpected bytes after the data", Assert.Throws<DataException>(() => IdxReader.Read(images, labels)).Message);
    }

    [Fact]
    public void Idx_ZeroFeatures_NamesTheFile()
    {
        string images = WriteIdx("train-images-idx3-ubyte", 8, [5, 0, 0], []);
        string labels = WriteIdx("train-labels-idx1-ubyte", 8, [5], new byte[5]);
        var error = Assert.Throws<DataException>(() => IdxReader.Read(images, labels));
        Assert.Contains("train-images-idx3-ubyte: 5 images of 0 features each (dimensions [5, 0, 0])", error.Message);
    }

    [Fact]
    public void Directory_WithoutIdxFiles_SaysWhatItLookedFor()
    {
        var error = Assert.Throws<DataException>(() => DataSources.Load(_dir, null));
        Assert.Contains("has no train-images-idx3-ubyte or train-images-idx3-ubyte.gz", error.Message);
        Assert.Contains("no such file or directory", Assert.Throws<DataException>(() => DataSources.Load(Path.Combine(_dir, "missing.csv"), null)).Message);
    }

    [Fact]
    public void EmbeddedDigits_Has1797RowsOf64Pixels()
    {
        Dataset digits = DataSources.EmbeddedDigits();
        Assert.Equal(1797, digits.Rows);
        Assert.Equal(64, digits.Features);
        Assert.Equal(10, digits.Classes.Count);
        Assert.Equal(16f, digits.Values.Max());
    }

    [Fact]
    public void Split_IsSeeded_AndPartitionsTheRows()
    {
        Dataset digits = DataSources.EmbeddedDigits();
        var (train, test) = DataSources.Split(digits, 0.2, seed: 1);
        Assert.Equal(359, test.Rows);
        Assert.Equal(1438, train.Rows);
        var (_, again) = DataSources.Split(digits, 0.2, seed: 1);
        var (_, other) = DataSources.Split(digits, 0.2, seed: 2);
        Assert.Equal(test.Values, again.Values);
        Assert.NotEqual(test.Values, other.Values);
    }

    [Fact]
    public void Standardise_UsesTrainingMeanAndStd_AndLeavesConstantFeaturesAtZero()
    {
        var data = new Dataset("t", 2, [1, 5, 3, 5], [0, 1], ["a", "b"], DataKind.Table);
        Preprocessing p = Preprocessing.Standardise(data);
        Assert.Equal([2f, 5f], p.Shift);
        Assert.Equal([1f, 1f], p.Scale);
        Assert.Equal([-1f, 0f, 1f, 0f], p.Apply(data).Values);
    }

    [Fact]
    public void ContentHash_DependsOnContentNotPath()
    {
        string a = Write("a.csv", "x,c\n1,p\n2,q\n");
        string b = Write("b.csv", "x,c\n1.0,p\n2,q\n");
        string c = Write("c.csv", "x,c\n1,p\n3,q\n");
        Assert.Equal(CsvReader.Read(a, new()).ContentHash(), CsvReader.Read(b, new()).ContentHash());
        Assert.NotEqual(CsvReader.Read(a, new()).ContentHash(), CsvReader.Read(c, new()).ContentHash());
    }
}
