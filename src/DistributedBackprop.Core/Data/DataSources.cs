using DistributedBackprop.Randomness;

namespace DistributedBackprop.Data;

/// <summary>A training set and, when the source brings one (an IDX directory with t10k files), its test set.</summary>
public sealed record LoadedData(Dataset Train, Dataset? BundledTest);

/// <summary>
/// Resolves a data argument to data: nothing → the embedded UCI digits; a directory → the MNIST-family
/// IDX files in it; an IDX images file → it and its labels file; anything else → CSV (gzipped or not).
/// </summary>
public static class DataSources
{
    public const string EmbeddedDigitsName = "digits (embedded)";

    public static LoadedData Load(string? path, string? labelColumn, CsvHeader header = CsvHeader.Auto)
    {
        if (string.IsNullOrEmpty(path))
        {
            return new LoadedData(EmbeddedDigits(), null);
        }
        if (Directory.Exists(path))
        {
            string trainImages = FindIdx(path, IdxReader.TrainImages, required: true)!;
            string trainLabels = FindIdx(path, IdxReader.TrainLabels, required: true)!;
            Dataset train = IdxReader.Read(trainImages, trainLabels);
            string? testImages = FindIdx(path, IdxReader.TestImages, required: false);
            string? testLabels = FindIdx(path, IdxReader.TestLabels, required: false);
            Dataset? test = testImages is not null && testLabels is not null
                ? IdxReader.WithClasses(IdxReader.Read(testImages, testLabels), train.Classes, testLabels)
                : null;
            return new LoadedData(train, test);
        }
        if (!File.Exists(path))
        {
            throw DataException.InFile(path, "no such file or directory");
        }
        if (IsIdx(path))
        {
            return new LoadedData(IdxReader.Read(path, LabelsFileFor(path)), null);
        }
        return new LoadedData(CsvReader.Read(path, new CsvOptions { LabelColumn = labelColumn, Header = header }), null);
    }

    /// <summary>Loads data that must use a known class list (test data, evaluation).</summary>
    public static Dataset LoadWithClasses(string path, string? labelColumn, IReadOnlyList<string> classes, int? expectedFeatures = null, bool labelOptional = false, CsvHeader header = CsvHeader.Auto)
    {
        if (Directory.Exists(path))
        {
            // A directory given as test data means its t10k files (or its train files if there are none).
            string? images = FindIdx(path, IdxReader.TestImages, required: false);
            string? labels = FindIdx(path, IdxReader.TestLabels, required: false);
            images ??= FindIdx(path, IdxReader.TrainImages, required: true)!;
            labels ??= FindIdx(path, IdxReader.TrainLabels, required: true)!;
            return CheckFeatures(IdxReader.WithClasses(IdxReader.Read(images, labels), classes, labels), expectedFeatures);
        }
        if (!File.Exists(path))
        {
            throw DataException.InFile(path, "no such file or directory");
        }
        if (IsIdx(path))
        {
            string labels = LabelsFileFor(path);
            return CheckFeatures(IdxReader.WithClasses(IdxReader.Read(path, labels), classes, labels), expectedFeatures);
        }
        return CsvReader.Read(path, new CsvOptions
        {
            LabelColumn = labelColumn,
            Classes = classes,
            ExpectedFeatures = expectedFeatures,
            LabelOptional = labelOptional,
            Header = header,
        });
    }

    /// <summary>
    /// The UCI optical recognition of handwritten digits test set (Alpaydin &amp; Kaynak 1998; 1797 8×8
    /// images, 16 grey levels, CC BY 4.0), embedded in this assembly with a header row added.
    /// </summary>
    public static Dataset EmbeddedDigits()
    {
        using Stream resource = typeof(DataSources).Assembly.GetManifestResourceStream("DistributedBackprop.Data.digits.csv.gz")
            ?? throw new InvalidOperationException("the embedded digits resource is missing from the assembly");
        using var gzip = new System.IO.Compression.GZipStream(resource, System.IO.Compression.CompressionMode.Decompress);
        using var reader = new StreamReader(gzip);
        return CsvReader.Read(reader, EmbeddedDigitsName, new CsvOptions());
    }

    /// <summary>
    /// Seeded split: a permutation from the run's stream for <paramref name="purpose"/>; the first ⌊fraction·n⌉
    /// rows of it are held out (the test set, or the validation set carved from the training rows). Both parts
    /// keep the original row order. <paramref name="part"/> names the held-out set in errors.
    /// </summary>
    public static (Dataset Train, Dataset Test) Split(Dataset data, double testFraction, ulong seed,
        StreamPurpose purpose = StreamPurpose.TrainTestSplit, string part = "test")
    {
        if (!(testFraction > 0 && testFraction < 1))
        {
            throw new ArgumentOutOfRangeException(nameof(testFraction), $"the {part} fraction must be in (0, 1)");
        }
        int testRows = (int)Math.Round(data.Rows * testFraction, MidpointRounding.AwayFromZero);
        if (testRows < 1 || testRows >= data.Rows)
        {
            throw DataException.InFile(data.Source, $"a {part} fraction of {testFraction} leaves {testRows} of {data.Rows} rows for the {part} set; both parts need at least one row");
        }
        int[] order = Enumerable.Range(0, data.Rows).ToArray();
        Xoshiro256.ForStream(seed, purpose).Shuffle(order);
        int[] test = order[..testRows];
        int[] train = order[testRows..];
        Array.Sort(test);
        Array.Sort(train);
        return (data.Subset(train), data.Subset(test));
    }

    private static bool IsIdx(string path)
    {
        string name = Path.GetFileName(path);
        if (name.Contains("-idx", StringComparison.Ordinal) || name.EndsWith(".idx", StringComparison.OrdinalIgnoreCase))
        {
            return true;
        }
        try
        {
            using Stream stream = DataFiles.OpenMaybeGzip(path);
            Span<byte> head = stackalloc byte[3];
            return stream.ReadAtLeast(head, 3, throwOnEndOfStream: false) == 3 && head[0] == 0 && head[1] == 0 && head[2] == 0x08;
        }
        catch (System.IO.InvalidDataException)
        {
            return false;
        }
    }

    /// <summary>The labels file beside an images file: train-images-idx3-ubyte → train-labels-idx1-ubyte.</summary>
    private static string LabelsFileFor(string imagesPath)
    {
        string directory = Path.GetDirectoryName(imagesPath) ?? ".";
        string name = Path.GetFileName(imagesPath).Replace("images", "labels", StringComparison.Ordinal).Replace("idx3", "idx1", StringComparison.Ordinal);
        string candidate = Path.Combine(directory, name);
        if (candidate == imagesPath || !File.Exists(candidate))
        {
            throw DataException.InFile(imagesPath, $"no labels file found beside it (looked for {candidate})");
        }
        return candidate;
    }

    private static string? FindIdx(string directory, string baseName, bool required)
    {
        foreach (string name in new[] { baseName, baseName + ".gz" })
        {
            string path = Path.Combine(directory, name);
            if (File.Exists(path))
            {
                return path;
            }
        }
        return required
            ? throw DataException.InFile(directory, $"directory has no {baseName} or {baseName}.gz")
            : null;
    }

    private static Dataset CheckFeatures(Dataset data, int? expected) =>
        expected is int features && data.Features != features
            ? throw DataException.InFile(data.Source, $"{data.Features} features per item, the model expects {features}")
            : data;
}
