/** Loaded many times by ClassLeak; its size (many methods) makes each copy visible in metaspace. */
public class Leaf {
    public long sum;
    public Leaf() {
        sum = m0(1);
    }
    public long m0(long x) {
        long y = x * 3 + 0;
        for (int k = 0; k < 2; k++) { y = y ^ (y << 1) + "s0".length(); }
        return y + m1(y);
    }
    public long m1(long x) {
        long y = x * 4 + 1;
        for (int k = 0; k < 3; k++) { y = y ^ (y << 2) + "s1".length(); }
        return y + m2(y);
    }
    public long m2(long x) {
        long y = x * 5 + 2;
        for (int k = 0; k < 4; k++) { y = y ^ (y << 3) + "s2".length(); }
        return y + m3(y);
    }
    public long m3(long x) {
        long y = x * 6 + 3;
        for (int k = 0; k < 5; k++) { y = y ^ (y << 4) + "s3".length(); }
        return y + m4(y);
    }
    public long m4(long x) {
        long y = x * 7 + 4;
        for (int k = 0; k < 6; k++) { y = y ^ (y << 5) + "s4".length(); }
        return y + m5(y);
    }
    public long m5(long x) {
        long y = x * 8 + 5;
        for (int k = 0; k < 7; k++) { y = y ^ (y << 6) + "s5".length(); }
        return y + m6(y);
    }
    public long m6(long x) {
        long y = x * 9 + 6;
        for (int k = 0; k < 8; k++) { y = y ^ (y << 7) + "s6".length(); }
        return y + m7(y);
    }
    public long m7(long x) {
        long y = x * 10 + 7;
        for (int k = 0; k < 2; k++) { y = y ^ (y << 8) + "s7".length(); }
        return y + m8(y);
    }
    public long m8(long x) {
        long y = x * 11 + 8;
        for (int k = 0; k < 3; k++) { y = y ^ (y << 9) + "s8".length(); }
        return y + m9(y);
    }
    public long m9(long x) {
        long y = x * 12 + 9;
        for (int k = 0; k < 4; k++) { y = y ^ (y << 10) + "s9".length(); }
        return y + m10(y);
    }
    public long m10(long x) {
        long y = x * 13 + 10;
        for (int k = 0; k < 5; k++) { y = y ^ (y << 11) + "s10".length(); }
        return y + m11(y);
    }
    public long m11(long x) {
        long y = x * 14 + 11;
        for (int k = 0; k < 6; k++) { y = y ^ (y << 12) + "s11".length(); }
        return y + m12(y);
    }
    public long m12(long x) {
        long y = x * 15 + 12;
        for (int k = 0; k < 7; k++) { y = y ^ (y << 13) + "s12".length(); }
        return y + m13(y);
    }
    public long m13(long x) {
        long y = x * 16 + 13;
        for (int k = 0; k < 8; k++) { y = y ^ (y << 1) + "s13".length(); }
        return y + m14(y);
    }
    public long m14(long x) {
        long y = x * 17 + 14;
        for (int k = 0; k < 2; k++) { y = y ^ (y << 2) + "s14".length(); }
        return y + m15(y);
    }
    public long m15(long x) {
        long y = x * 18 + 15;
        for (int k = 0; k < 3; k++) { y = y ^ (y << 3) + "s15".length(); }
        return y + m16(y);
    }
    public long m16(long x) {
        long y = x * 19 + 16;
        for (int k = 0; k < 4; k++) { y = y ^ (y << 4) + "s16".length(); }
        return y + m17(y);
    }
    public long m17(long x) {
        long y = x * 20 + 17;
        for (int k = 0; k < 5; k++) { y = y ^ (y << 5) + "s17".length(); }
        return y + m18(y);
    }
    public long m18(long x) {
        long y = x * 21 + 18;
        for (int k = 0; k < 6; k++) { y = y ^ (y << 6) + "s18".length(); }
        return y + m19(y);
    }
    public long m19(long x) {
        long y = x * 22 + 19;
        for (int k = 0; k < 7; k++) { y = y ^ (y << 7) + "s19".length(); }
        return y + m20(y);
    }
    public long m20(long x) {
        long y = x * 23 + 20;
        for (int k = 0; k < 8; k++) { y = y ^ (y << 8) + "s20".length(); }
        return y + m21(y);
    }
    public long m21(long x) {
        long y = x * 24 + 21;
        for (int k = 0; k < 2; k++) { y = y ^ (y << 9) + "s21".length(); }
        return y + m22(y);
    }
    public long m22(long x) {
        long y = x * 25 + 22;
        for (int k = 0; k < 3; k++) { y = y ^ (y << 10) + "s22".length(); }
        return y + m23(y);
    }
    public long m23(long x) {
        long y = x * 26 + 23;
        for (int k = 0; k < 4; k++) { y = y ^ (y << 11) + "s23".length(); }
        return y + m24(y);
    }
    public long m24(long x) {
        long y = x * 27 + 24;
        for (int k = 0; k < 5; k++) { y = y ^ (y << 12) + "s24".length(); }
        return y + m25(y);
    }
    public long m25(long x) {
        long y = x * 28 + 25;
        for (int k = 0; k < 6; k++) { y = y ^ (y << 13) + "s25".length(); }
        return y + m26(y);
    }
    public long m26(long x) {
        long y = x * 29 + 26;
        for (int k = 0; k < 7; k++) { y = y ^ (y << 1) + "s26".length(); }
        return y + m27(y);
    }
    public long m27(long x) {
        long y = x * 30 + 27;
        for (int k = 0; k < 8; k++) { y = y ^ (y << 2) + "s27".length(); }
        return y + m28(y);
    }
    public long m28(long x) {
        long y = x * 31 + 28;
        for (int k = 0; k < 2; k++) { y = y ^ (y << 3) + "s28".length(); }
        return y + m29(y);
    }
    public long m29(long x) {
        long y = x * 32 + 29;
        for (int k = 0; k < 3; k++) { y = y ^ (y << 4) + "s29".length(); }
        return y + m30(y);
    }
    public long m30(long x) {
        long y = x * 33 + 30;
        for (int k = 0; k < 4; k++) { y = y ^ (y << 5) + "s30".length(); }
        return y + m31(y);
    }
    public long m31(long x) {
        long y = x * 34 + 31;
        for (int k = 0; k < 5; k++) { y = y ^ (y << 6) + "s31".length(); }
        return y + m32(y);
    }
    public long m32(long x) {
        long y = x * 35 + 32;
        for (int k = 0; k < 6; k++) { y = y ^ (y << 7) + "s32".length(); }
        return y + m33(y);
    }
    public long m33(long x) {
        long y = x * 36 + 33;
        for (int k = 0; k < 7; k++) { y = y ^ (y << 8) + "s33".length(); }
        return y + m34(y);
    }
    public long m34(long x) {
        long y = x * 37 + 34;
        for (int k = 0; k < 8; k++) { y = y ^ (y << 9) + "s34".length(); }
        return y + m35(y);
    }
    public long m35(long x) {
        long y = x * 38 + 35;
        for (int k = 0; k < 2; k++) { y = y ^ (y << 10) + "s35".length(); }
        return y + m36(y);
    }
    public long m36(long x) {
        long y = x * 39 + 36;
        for (int k = 0; k < 3; k++) { y = y ^ (y << 11) + "s36".length(); }
        return y + m37(y);
    }
    public long m37(long x) {
        long y = x * 40 + 37;
        for (int k = 0; k < 4; k++) { y = y ^ (y << 12) + "s37".length(); }
        return y + m38(y);
    }
    public long m38(long x) {
        long y = x * 41 + 38;
        for (int k = 0; k < 5; k++) { y = y ^ (y << 13) + "s38".length(); }
        return y + m39(y);
    }
    public long m39(long x) {
        long y = x * 42 + 39;
        for (int k = 0; k < 6; k++) { y = y ^ (y << 1) + "s39".length(); }
        return y + m40(y);
    }
    public long m40(long x) {
        long y = x * 43 + 40;
        for (int k = 0; k < 7; k++) { y = y ^ (y << 2) + "s40".length(); }
        return y + m41(y);
    }
    public long m41(long x) {
        long y = x * 44 + 41;
        for (int k = 0; k < 8; k++) { y = y ^ (y << 3) + "s41".length(); }
        return y + m42(y);
    }
    public long m42(long x) {
        long y = x * 45 + 42;
        for (int k = 0; k < 2; k++) { y = y ^ (y << 4) + "s42".length(); }
        return y + m43(y);
    }
    public long m43(long x) {
        long y = x * 46 + 43;
        for (int k = 0; k < 3; k++) { y = y ^ (y << 5) + "s43".length(); }
        return y + m44(y);
    }
    public long m44(long x) {
        long y = x * 47 + 44;
        for (int k = 0; k < 4; k++) { y = y ^ (y << 6) + "s44".length(); }
        return y + m45(y);
    }
    public long m45(long x) {
        long y = x * 48 + 45;
        for (int k = 0; k < 5; k++) { y = y ^ (y << 7) + "s45".length(); }
        return y + m46(y);
    }
    public long m46(long x) {
        long y = x * 49 + 46;
        for (int k = 0; k < 6; k++) { y = y ^ (y << 8) + "s46".length(); }
        return y + m47(y);
    }
    public long m47(long x) {
        long y = x * 50 + 47;
        for (int k = 0; k < 7; k++) { y = y ^ (y << 9) + "s47".length(); }
        return y + m48(y);
    }
    public long m48(long x) {
        long y = x * 51 + 48;
        for (int k = 0; k < 8; k++) { y = y ^ (y << 10) + "s48".length(); }
        return y + m49(y);
    }
    public long m49(long x) {
        long y = x * 52 + 49;
        for (int k = 0; k < 2; k++) { y = y ^ (y << 11) + "s49".length(); }
        return y + m50(y);
    }
    public long m50(long x) {
        long y = x * 53 + 50;
        for (int k = 0; k < 3; k++) { y = y ^ (y << 12) + "s50".length(); }
        return y + m51(y);
    }
    public long m51(long x) {
        long y = x * 54 + 51;
        for (int k = 0; k < 4; k++) { y = y ^ (y << 13) + "s51".length(); }
        return y + m52(y);
    }
    public long m52(long x) {
        long y = x * 55 + 52;
        for (int k = 0; k < 5; k++) { y = y ^ (y << 1) + "s52".length(); }
        return y + m53(y);
    }
    public long m53(long x) {
        long y = x * 56 + 53;
        for (int k = 0; k < 6; k++) { y = y ^ (y << 2) + "s53".length(); }
        return y + m54(y);
    }
    public long m54(long x) {
        long y = x * 57 + 54;
        for (int k = 0; k < 7; k++) { y = y ^ (y << 3) + "s54".length(); }
        return y + m55(y);
    }
    public long m55(long x) {
        long y = x * 58 + 55;
        for (int k = 0; k < 8; k++) { y = y ^ (y << 4) + "s55".length(); }
        return y + m56(y);
    }
    public long m56(long x) {
        long y = x * 59 + 56;
        for (int k = 0; k < 2; k++) { y = y ^ (y << 5) + "s56".length(); }
        return y + m57(y);
    }
    public long m57(long x) {
        long y = x * 60 + 57;
        for (int k = 0; k < 3; k++) { y = y ^ (y << 6) + "s57".length(); }
        return y + m58(y);
    }
    public long m58(long x) {
        long y = x * 61 + 58;
        for (int k = 0; k < 4; k++) { y = y ^ (y << 7) + "s58".length(); }
        return y + m59(y);
    }
    public long m59(long x) {
        long y = x * 62 + 59;
        for (int k = 0; k < 5; k++) { y = y ^ (y << 8) + "s59".length(); }
        return y;
    }
}
