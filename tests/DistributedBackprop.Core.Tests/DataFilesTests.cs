using System.Diagnostics;
using System.IO.Compression;
using System.Text;
using DistributedBackprop.Data;

namespace DistributedBackprop.Tests;

/// <summary>Reading from pipes and writing to devices and pipes (Linux: FIFOs made with mkfifo, the real /dev/null and /dev/full).</summary>
public sealed class DataFilesTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("dbp-files-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Fifo(string name)
    {
        string path = Path.Combine(_dir, name);
        using Process mkfifo = Process.Start("mkfifo", [path])!;
        mkfifo.WaitForExit();
        Assert.Equal(0, mkfifo.ExitCode);
        return path;
    }

    [Fact]
    public void KindOf_TellsFilesDirectoriesDevicesAndPipesApart()
    {
        string file = Path.Combine(_dir, "a.txt");
        File.WriteAllText(file, "x");
        string link = Path.Combine(_dir, "null-link");
        File.CreateSymbolicLink(link, "/dev/null");

        Assert.Equal(DataFiles.PathKind.Regular, DataFiles.KindOf(file));
        Assert.Equal(DataFiles.PathKind.Directory, DataFiles.KindOf(_dir));
        Assert.Equal(DataFiles.PathKind.Missing, DataFiles.KindOf(Path.Combine(_dir, "none")));
        Assert.Equal(DataFiles.PathKind.Special, DataFiles.KindOf("/dev/null"));
        Assert.Equal(DataFiles.PathKind.Special, DataFiles.KindOf(link));
        Assert.Equal(DataFiles.PathKind.Special, DataFiles.KindOf(Fifo("pipe")));
    }

    [Fact]
    public async Task WritingToAFifo_WritesThrough_AndLeavesTheFifo()
    {
        string fifo = Fifo("out");
        Task<string> reader = Task.Run(() => File.ReadAllText(fifo));

        DataFiles.WriteAtomically(fifo, stream => stream.Write("model bytes"u8));

        Assert.Equal("model bytes", await reader);
        Assert.Equal(DataFiles.PathKind.Special, DataFiles.KindOf(fifo));
        Assert.Equal(["out"], Directory.GetFileSystemEntries(_dir).Select(Path.GetFileName));
    }

    [Fact]
    public void WritingToAFullDevice_FailsNamingIt_AndLeavesTheDevice()
    {
        // A symbolic link in our directory to the real /dev/full: renaming a file over the link would replace it.
        string full = Path.Combine(_dir, "full");
        File.CreateSymbolicLink(full, "/dev/full");

        var error = Assert.Throws<IOException>(() => DataFiles.WriteAtomically(full, stream => stream.Write(new byte[1 << 20])));

        Assert.StartsWith($"{full}: cannot write (", error.Message);
        Assert.Equal("/dev/full", new FileInfo(full).LinkTarget);
        Assert.Equal(DataFiles.PathKind.Special, DataFiles.KindOf(full));
        Assert.Equal(["full"], Directory.GetFileSystemEntries(_dir).Select(Path.GetFileName));
    }

    [Fact]
    public void WritingOverADirectory_FailsNamingIt()
    {
        Assert.Equal($"{_dir}: is a directory", Assert.Throws<IOException>(() => DataFiles.WriteAtomically(_dir, stream => stream.WriteByte(1))).Message);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task AFileThatCannotSeek_IsReadWhole_GzippedOrNot(bool gzipped)
    {
        string text = string.Join('\n', Enumerable.Range(0, 5000).Select(i => $"{i},{i * 2},{i % 3}")) + "\n";
        byte[] bytes = Encoding.UTF8.GetBytes(text);
        if (gzipped)
        {
            using var packed = new MemoryStream();
            using (var gzip = new GZipStream(packed, CompressionLevel.Fastest, leaveOpen: true))
            {
                gzip.Write(bytes);
            }
            bytes = packed.ToArray();
        }
        string fifo = Fifo("in");
        Task writer = Task.Run(() => File.WriteAllBytes(fifo, bytes));

        using Stream stream = DataFiles.OpenMaybeGzip(fifo);
        using var reader = new StreamReader(stream);
        Assert.Equal(text, await reader.ReadToEndAsync());
        await writer;
    }

    private static byte[] Gzipped(string text)
    {
        using var packed = new MemoryStream();
        using (var gzip = new GZipStream(packed, CompressionLevel.Optimal, leaveOpen: true))
        {
            gzip.Write(Encoding.UTF8.GetBytes(text));
        }
        return packed.ToArray();
    }

    private static string Rows(int count) =>
        "a,b,label\n" + string.Join('\n', Enumerable.Range(0, count).Select(i => $"{i % 97},{i * 7 % 13},{(i % 2 == 0 ? "even" : "odd")}")) + "\n";

    /// <summary>
    /// .NET's GZipStream ends quietly where a cut file ends; the data set would be the rows before the cut. Cut
    /// anywhere (inside the deflate data, inside the trailer), or with bytes after the trailer, a file is refused.
    /// </summary>
    [Fact]
    public void AGzipFileCutShortOrWithBytesAfterIt_IsRefused_AWholeOneRead()
    {
        string text = Rows(20_000);
        byte[] whole = Gzipped(text);
        string path = Path.Combine(_dir, "rows.csv.gz");

        File.WriteAllBytes(path, whole);
        Assert.Equal(20_000, CsvReader.Read(path, new CsvOptions()).Rows);
        using (var reader = new StreamReader(DataFiles.OpenMaybeGzip(path)))
        {
            Assert.Equal(text, reader.ReadToEnd());
        }

        foreach (byte[] bad in new[] { whole[..(whole.Length / 2)], whole[..^4], whole[..^1], [.. whole, (byte)'\n'] })
        {
            File.WriteAllBytes(path, bad);
            var error = Assert.Throws<DataException>(() => CsvReader.Read(path, new CsvOptions()));
            Assert.Contains($"{path}:", error.Message);
            Assert.Contains("without a trailer (CRC-32 and length) that matches them", error.Message);
        }
    }
}
